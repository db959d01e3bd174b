package hub

import (
	"context"
	"errors"
	"time"

	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/internal/bufpool"
	"github.com/usltun/usltun/internal/splice"
	"github.com/usltun/usltun/usl"
)

// Relay between peers. A stream from peer A whose destination lies in
// peer B's route (and in A's exports: the gateway checked that before it
// asked) is answered only once B's session answered the same descriptor:
// B's accept becomes A's accept, B's reject A's reject with the same
// reason, so A's application keeps TCP's connect semantics end to end.
// Then the two streams are spliced in this process, with no socket in
// between: each session keeps its own replay buffer and reconnects on its
// own, so the flow survives either spoke's partition.

// relayDialTimeout bounds how long A's connect waits for B: as long as a
// gateway's own dial (gateway.Config.DialTimeout's default).
const relayDialTimeout = 10 * time.Second

// forward is the peer's gateway.Config.Forward.
func (l *Live) forward(ctx context.Context, st *usl.Stream, dst flow.Dest) bool {
	to := l.h.route(dst)
	if to == nil || to == l {
		return false // not another peer's: the gateway dials it
	}
	dctx, cancel := context.WithTimeout(ctx, relayDialTimeout)
	out, ended, err := to.open(dctx, dst)
	cancel()
	if err != nil {
		code := usl.ResetUnreachable
		var re *usl.ResetError
		var fe *flow.Error
		switch {
		case errors.As(err, &re):
			code = re.Code
		case errors.As(err, &fe) && fe.Reason == flow.Limit:
			code = usl.ResetLimit
		case errors.Is(err, context.DeadlineExceeded):
			code = usl.ResetTimeout
		}
		l.h.log.Info("relay failed", "from", l.Peer().Name, "to", to.Peer().Name, "dst", dst.String(), "reason", code.String(), "err", err)
		st.Reject(code)
		return true
	}
	defer ended()
	if !l.track(st) {
		st.Reject(usl.ResetAborted)
		out.Reset(usl.ResetAborted)
		return true
	}
	defer l.untrack(st)
	if err := st.Accept(); err != nil {
		out.Reset(usl.ResetAborted)
		return true
	}
	l.h.log.Debug("relay open", "from", l.Peer().Name, "to", to.Peer().Name, "dst", dst.String())
	spliceStreams(&l.h.bufs, st, out)
	return true
}

// spliceStreams copies both ways between a and b. A FIN is passed on as a
// FIN; a reset on either side resets the other with the same reason. Once
// one direction has finished the other gets flow.DefaultHalfCloseTimeout.
func spliceStreams(pool *bufpool.Pool, a, b *usl.Stream) {
	done := make(chan error, 2)
	half := func(dst, src *usl.Stream) {
		err := splice.Copy(dst, src, pool, nil) // src writes its buffers to dst itself (usl.Stream.WriteTo)
		if err == nil {
			err = dst.CloseWrite()
		}
		done <- err
	}
	go half(a, b)
	go half(b, a)
	pending := 2
	err := <-done
	pending--
	if err == nil {
		t := time.NewTimer(flow.DefaultHalfCloseTimeout)
		select {
		case err = <-done:
			pending--
		case <-t.C:
			err = errors.New("half-closed relay timed out")
		}
		t.Stop()
	}
	if err != nil {
		code := usl.ResetAborted
		var re *usl.ResetError
		if errors.As(err, &re) {
			code = re.Code
		}
		a.Reset(code)
		b.Reset(code)
	}
	a.Close()
	b.Close()
	for ; pending > 0; pending-- {
		<-done
	}
}
