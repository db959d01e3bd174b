package loadgen

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"
)

func TestRecoveriesPerHeal(t *testing.T) {
	ms := int64(time.Millisecond)
	base := time.Unix(100, 0)
	at := func(d int64) int64 { return base.UnixNano() + d*ms }
	// Flow 0 down: a byte every 2 ms, except for a gap from 100 to 400 ms.
	// Flow 1 down: the same with a gap from 100 to 700 ms.
	var tl0, tl1 timeline
	for d := int64(0); d <= 1000; d += 2 {
		if d <= 100 || d >= 400 {
			tl0.record(at(d))
		}
		if d <= 100 || d >= 700 {
			tl1.record(at(d))
		}
	}
	empty := Direction{Match: true}
	flows := []FlowReport{
		{Flow: 0, Up: empty, Down: Direction{Match: true, tl: tl0}},
		{Flow: 1, Up: empty, Down: Direction{Match: true, tl: tl1}},
	}
	heals := []time.Time{base.Add(300 * time.Millisecond), base.Add(800 * time.Millisecond), base.Add(2 * time.Second)}
	rc := recoveries(flows, heals)
	if len(rc) != 3 {
		t.Fatalf("%d recoveries", len(rc))
	}
	// Heal at 300: flow 0 recovers at 400 (100 ms), flow 1 at 700 (400 ms).
	if rc[0].Delay != 400*time.Millisecond || rc[0].Flow != 1 || rc[0].Direction != "down" {
		t.Errorf("heal 1: %+v", rc[0])
	}
	// Heal at 800: both were flowing (no gap spans it): recovered at once.
	if rc[1].Delay != 0 {
		t.Errorf("heal 2: %+v", rc[1])
	}
	// Heal at 2 s: both flows had completed before it; nothing to recover.
	if rc[2].Delay != 0 {
		t.Errorf("heal 3: %+v", rc[2])
	}
	// A direction that died (not complete) and got nothing after the heal
	// never recovered.
	flows[1].Down.Match = false
	if rc := recoveries(flows, heals[2:]); rc[0].Delay != -1 || rc[0].Flow != 1 {
		t.Errorf("dead flow: %+v", rc[0])
	}
}

func TestHealFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "heal")
	if marks, err := ReadHealMarks(path); err != nil || len(marks) != 0 {
		t.Fatalf("missing file: %v %v", marks, err)
	}
	t1, t2 := time.Unix(1, 5), time.Unix(2, 7)
	for _, m := range []time.Time{t1, t2} {
		if err := AppendHealMark(path, m); err != nil {
			t.Fatal(err)
		}
	}
	marks, err := ReadHealMarks(path)
	if err != nil || len(marks) != 2 || !marks[0].Equal(t1) || !marks[1].Equal(t2) {
		t.Fatalf("marks %v, %v", marks, err)
	}
}

func TestCancelEndsRunPromptly(t *testing.T) {
	s := startServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	r, err := Start(ctx, Config{Addr: s.Addr().String(), Duration: time.Minute, Flows: 2})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case <-r.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("run did not end after cancel")
	}
	rep, _ := r.Wait()
	if rep.Verified || !rep.HasErrno("CANCELED") {
		t.Fatalf("errors %v, want CANCELED", rep.Errnos())
	}
}

// TestBadHeaderRejected: the server must survive garbage and keep serving.
func TestBadHeaderRejected(t *testing.T) {
	s := startServer(t)
	// A short write the server waits for (up to its header timeout)...
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	defer c.Close()
	// ...and a full header with the wrong magic, which it drops at once.
	c2, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.Write(make([]byte, headerLen))
	c2.SetReadDeadline(time.Now().Add(2 * time.Second))
	var b [1]byte
	if n, err := c2.Read(b[:]); n != 0 || err == nil || isTimeout(err) {
		t.Fatalf("bad header: read %d, %v; want the server to close", n, err)
	}
	if rep := run(t, Config{Addr: s.Addr().String(), Bytes: 1000}); !rep.Verified {
		t.Fatalf("server broken after garbage:\n%s", rep)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestTimelineKeepsLongGaps: with more gaps than fit, the short ones go and
// the long (fault) gap survives, so recovery stays exact for it.
func TestTimelineKeepsLongGaps(t *testing.T) {
	var tl timeline
	ms := int64(time.Millisecond)
	now := int64(1e12)
	tl.record(now)
	for i := range 3 * maxGaps {
		step := 6 * ms // a short gap each time
		if i == maxGaps/2 {
			step = 2000 * ms // the fault
		}
		now += step
		tl.record(now)
	}
	if len(tl.Gaps) != maxGaps || tl.Dropped != 6*ms {
		t.Fatalf("%d gaps, dropped %d", len(tl.Gaps), tl.Dropped)
	}
	found := false
	for _, g := range tl.Gaps {
		found = found || g.End-g.Start == 2000*ms
	}
	if !found {
		t.Fatal("the long gap was dropped")
	}
}

// TestReceivePathAllocatesNothing: the per-read bookkeeping (timeline,
// counters, hash, comparison) must not allocate.
func TestReceivePathAllocatesNothing(t *testing.T) {
	h := &header{seed: 1, flow: 2, verify: true}
	f := newFlowEnd(0, "client", nil, h, Up, &counters{}, nil)
	buf, exp := make([]byte, 32<<10), make([]byte, 32<<10)
	src := newStream(1, 2, Down)
	if n := testing.AllocsPerRun(200, func() {
		src.fill(buf)
		f.got(buf, exp)
	}); n != 0 {
		t.Fatalf("%v allocations per read", n)
	}
	if f.rep.Recv.Mismatch != -1 || f.rep.Recv.Bytes == 0 {
		t.Fatalf("mismatch %d after %d bytes", f.rep.Recv.Mismatch, f.rep.Recv.Bytes)
	}
}
