// Package netstack terminates the applications' TCP and UDP flows that
// arrive on the TUN device in a gVisor network stack, and hands each flow to
// a flow.Dialer that carries it to the far side (a USL stream in usltun).
//
// TCP connect semantics are preserved end to end:
//
//	app SYN ──► forwarder ──► Dialer.DialFlow (peer dials the destination)
//	                           ├─ ok          ──► SYN-ACK, splice both ways
//	                           ├─ refused,
//	                           │  forbidden,
//	                           │  limit, fenced ──► RST          (ECONNREFUSED)
//	                           └─ unreachable,
//	                              timeout     ──► ICMP unreachable (EHOSTUNREACH)
//
// The application never sees a connect that succeeds and then closes. While
// the session is partitioned DialFlow blocks and the SYN waits (the app
// retransmits it; gVisor swallows duplicates of an in-flight 4-tuple), bounded
// by Config.ConnectTimeout.
//
// ICMP echo is not answered here: each (source, destination, identifier)
// becomes a flow.ICMP flow, answered by the far side or not at all (see
// icmp.go).
//
// Once spliced, a FIN from either side becomes CloseWrite on the other, an
// RST becomes an abort, and the wait for the second FIN is bounded by
// Config.HalfCloseTimeout. There are no per-flow keepalives: the session
// below keeps itself alive, and healthy idle flows live for hours.
package netstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/internal/bufpool"
	"github.com/usltun/usltun/internal/ratelog"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Config configures a Stack. Zero values select the defaults.
type Config struct {
	// MTU of the link; if set it must equal the link endpoint's MTU.
	MTU int
	// MaxFlows caps open TCP plus UDP flows (default 8192). Beyond it new
	// SYNs are answered with RST and new UDP flows are dropped.
	MaxFlows int
	// MaxPendingConnects caps TCP handshakes waiting for DialFlow (the
	// forwarder's in-flight limit, default 1024). SYNs beyond it are dropped
	// and retransmitted by the application.
	MaxPendingConnects int
	// ConnectTimeout bounds how long a SYN waits for DialFlow (default 60 s),
	// generous so a connect during a partition completes after the heal.
	ConnectTimeout time.Duration
	// HalfCloseTimeout bounds the wait for the second FIN once one side
	// has closed its direction (default 2 min).
	HalfCloseTimeout time.Duration
	// UDPIdleTimeout closes a UDP flow without traffic either way (default
	// 60 s; flows to port 53 use at most 10 s).
	UDPIdleTimeout time.Duration
	// Dialer opens the remote half of each flow. Required.
	Dialer flow.Dialer
	// Logger receives flow-level logs; nil discards them.
	Logger *slog.Logger
}

// Defaults of Config, exported so that front ends (the CLI's flags) state
// the same numbers.
const (
	DefaultMaxFlows           = 8192
	DefaultMaxPendingConnects = 1024
	DefaultConnectTimeout     = 60 * time.Second
)

func (c *Config) setDefaults() {
	if c.MaxFlows <= 0 {
		c.MaxFlows = DefaultMaxFlows
	}
	if c.MaxPendingConnects <= 0 {
		c.MaxPendingConnects = DefaultMaxPendingConnects
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.HalfCloseTimeout <= 0 {
		c.HalfCloseTimeout = flow.DefaultHalfCloseTimeout
	}
	if c.UDPIdleTimeout <= 0 {
		c.UDPIdleTimeout = flow.DefaultUDPIdleTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Stats is a snapshot of the stack's flows.
type Stats struct {
	TCPFlows        int    // spliced TCP flows
	PendingConnects int    // SYNs waiting for DialFlow
	UDPFlows        int    // open UDP flows
	RefusedByLimit  uint64 // flows refused because MaxFlows was reached
	DialErrors      uint64 // DialFlow failures (refused, unreachable, forbidden, ...)
	ICMPFlows       int    // open echo (ping) flows
}

// Stack is a gVisor stack serving one link endpoint.
type Stack struct {
	cfg   Config
	s     *stack.Stack
	link  *linkFilter
	nicID tcpip.NICID
	log   *slog.Logger

	ctx    context.Context // canceled by Close: aborts pending dials
	cancel context.CancelFunc

	mu      sync.Mutex
	closing bool
	flows   map[flowCloser]struct{}
	wg      sync.WaitGroup // every flow goroutine

	flowCount    atomic.Int64 // TCP (pending or spliced) + UDP, against MaxFlows
	tcpFlows     atomic.Int64
	pending      atomic.Int64
	udpFlows     atomic.Int64
	icmpFlows    atomic.Int64
	refused      atomic.Uint64
	dialErrors   atomic.Uint64
	lastLimitLog atomic.Int64 // unix nanos; limit logs at most every 10 s
	failed       *ratelog.Log // connects that failed (not refused), a line a second at most

	echoMu sync.Mutex
	echoes map[echoKey]*echoFlow // open ICMP flows, found by the packet path

	bufs bufpool.Pool // borrowed by busy TCP pumps and by UDP datagrams in flight

	closeOnce sync.Once
}

// flowCloser is a live flow that Close must shut down.
type flowCloser interface{ shutdown() }

// New builds the stack on ep. Transport handlers are installed before the NIC
// is created, so no packet can reach a NIC without them.
func New(ep stack.LinkEndpoint, cfg Config) (*Stack, error) {
	if cfg.Dialer == nil {
		return nil, errors.New("netstack: Config.Dialer is required")
	}
	if cfg.MTU != 0 && uint32(cfg.MTU) != ep.MTU() {
		return nil, fmt.Errorf("netstack: MTU %d differs from the link's MTU %d", cfg.MTU, ep.MTU())
	}
	cfg.setDefaults()
	st := &Stack{cfg: cfg, log: cfg.Logger, flows: make(map[flowCloser]struct{}), nicID: 1,
		failed: ratelog.New(cfg.Logger, slog.LevelInfo, time.Second)}
	st.ctx, st.cancel = context.WithCancel(context.Background())
	st.s = newGVisorStack()
	if err := tune(st.s); err != nil {
		st.s.Destroy()
		return nil, err
	}
	st.installHandlers()
	st.link = newLinkFilter(ep, cfg.MaxPendingConnects, cfg.ConnectTimeout+10*time.Second)
	st.echoes = make(map[echoKey]*echoFlow)
	st.link.onEcho = st.handleEcho
	if err := st.createNIC(); err != nil {
		st.link.detach() // before Destroy, for the reason given in Close
		st.s.Destroy()
		return nil, err
	}
	return st, nil
}

// Stats returns a snapshot of the flow counters.
func (st *Stack) Stats() Stats {
	return Stats{
		TCPFlows:        int(st.tcpFlows.Load()),
		PendingConnects: int(st.pending.Load()),
		UDPFlows:        int(st.udpFlows.Load()),
		RefusedByLimit:  st.refused.Load(),
		DialErrors:      st.dialErrors.Load(),
		ICMPFlows:       int(st.icmpFlows.Load()),
	}
}

// track registers a live flow and its goroutine; it fails once Close began.
func (st *Stack) track(f flowCloser) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.closing {
		return false
	}
	st.flows[f] = struct{}{}
	st.wg.Add(1)
	return true
}

func (st *Stack) untrack(f flowCloser) {
	st.mu.Lock()
	delete(st.flows, f)
	st.mu.Unlock()
	st.wg.Done()
}

// acquireFlow reserves one of MaxFlows; on failure it counts and logs.
func (st *Stack) acquireFlow(dest flow.Dest) bool {
	if st.flowCount.Add(1) <= int64(st.cfg.MaxFlows) {
		return true
	}
	st.flowCount.Add(-1)
	n := st.refused.Add(1)
	now := time.Now().UnixNano()
	last := st.lastLimitLog.Load()
	if now-last >= int64(10*time.Second) && st.lastLimitLog.CompareAndSwap(last, now) {
		st.log.Warn("flow limit reached, refusing new flows", "max_flows", st.cfg.MaxFlows, "dest", dest.String(), "refused_total", n)
	}
	return false
}

func (st *Stack) releaseFlow() { st.flowCount.Add(-1) }

// Close shuts every flow down, with FINs where the flow can take them
// (data in flight at that moment is not delivered), then tears the stack
// down and waits for all goroutines, including the link endpoint's reader.
func (st *Stack) Close() error {
	st.closeOnce.Do(func() {
		st.mu.Lock()
		st.closing = true
		flows := make([]flowCloser, 0, len(st.flows))
		for f := range st.flows {
			flows = append(flows, f)
		}
		st.mu.Unlock()
		st.cancel()
		for _, f := range flows {
			f.shutdown()
		}
		st.wg.Wait()
		// Stop the link reader before gVisor removes the NIC: stack.Wait
		// detaches links while holding the stack lock, and a reader that is
		// delivering a packet needs that lock (see gvisor#11456).
		st.link.detach()
		st.s.Close()
		st.s.Wait() // removes the NIC, which detaches and waits for the link reader
	})
	return nil
}
