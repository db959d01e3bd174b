package usl

import (
	"testing"
	"time"
)

// tuningSession is a session with one up path of the given srtt and no
// connection: enough for Stream.tuneLocked, which reads only the paths'
// srtts, the config and the session's growth budget.
func tuningSession(t *testing.T, recvBuffer int, srtt time.Duration) *Session {
	t.Helper()
	k := newKeypair(t)
	cfg, err := Config{PrivateKey: k.priv, PeerKeys: []PublicKey{k.pub}, RecvBuffer: recvBuffer}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	s := newSession(cfg, true, k.pub, sessionID{})
	p := &path{}
	p.mp.state, p.mp.srtt = PathUp, srtt
	s.paths = []*path{p}
	return s
}

// consume makes st's reader take half its window every step, tuning at
// each, n times.
func consume(st *Stream, start time.Time, step time.Duration, n int) {
	now := start
	st.tuneLocked(now)
	for range n {
		st.consumed += st.window / 2
		now = now.Add(step)
		st.tuneLocked(now)
	}
}

// TestStreamWindowTuning: a reader that drains half its window in less
// than two RTTs (the sender waits for credit, not the network) gets the
// window doubled, up to MaxStreamWindow; a slow reader keeps the initial
// window; the growth of all streams is bounded by RecvBuffer/4 and given
// back when a stream is removed.
func TestStreamWindowTuning(t *testing.T) {
	s := tuningSession(t, DefaultRecvBuffer, 10*time.Millisecond)
	fast := newStream(s, 1, nil)
	consume(fast, time.Now(), time.Millisecond, 20)
	if fast.window != uint64(DefaultMaxStreamWindow) {
		t.Errorf("fast reader: window %d, want MaxStreamWindow %d", fast.window, DefaultMaxStreamWindow)
	}
	slow := newStream(s, 3, nil)
	consume(slow, time.Now(), 50*time.Millisecond, 20)
	if slow.window != uint64(DefaultStreamWindow) {
		t.Errorf("slow reader (half a window per 5 RTTs): window %d, want the initial %d", slow.window, DefaultStreamWindow)
	}
	if want := uint64(DefaultMaxStreamWindow - DefaultStreamWindow); s.windowGrowth != want {
		t.Errorf("session growth %d, want %d", s.windowGrowth, want)
	}
	s.streams[1] = fast
	fast.err = ErrStreamClosed
	fast.maybeRemoveLocked()
	if s.windowGrowth != 0 {
		t.Errorf("growth %d after the grown stream was removed, want 0", s.windowGrowth)
	}

	// RecvBuffer 8 MiB: 2 MiB of growth for all streams together.
	s = tuningSession(t, 8<<20, 10*time.Millisecond)
	var total uint64
	for id := uint32(1); id < 12; id += 2 {
		st := newStream(s, id, nil)
		consume(st, time.Now(), time.Millisecond, 20)
		total += st.window - uint64(DefaultStreamWindow)
	}
	if total > 2<<20 || s.windowGrowth != total {
		t.Errorf("streams grew by %d (session counts %d), want at most RecvBuffer/4 = %d", total, s.windowGrowth, 2<<20)
	}

	// No RTT sample yet: nothing to compare with, no growth.
	s = tuningSession(t, DefaultRecvBuffer, 0)
	st := newStream(s, 1, nil)
	consume(st, time.Now(), time.Microsecond, 20)
	if st.window != uint64(DefaultStreamWindow) {
		t.Errorf("without an srtt: window %d, want %d", st.window, DefaultStreamWindow)
	}
}
