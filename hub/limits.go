package hub

import "github.com/usltun/usltun/usl"

// Limits are one peer's budgets on this host. They bound what one peer can
// take from the others: a peer that floods the hub meets its own limits
// first. WithDefaults fills zero fields; a Hub given a zero MaxFlows,
// MaxDials or MaxOpens leaves that bound off (the command line's single peer, whose
// flows --max-flows bounds at the device, as before there was a hub).
type Limits struct {
	// MaxFlows bounds the peer's concurrent flows in each direction: flows
	// this host sends to it, and flows it opens through this host's
	// gateway. Beyond it a new flow is refused with the limit reason.
	MaxFlows int
	// MaxStreams bounds the open streams of the peer's session, both
	// directions together (usl.Config.MaxStreams).
	MaxStreams int
	// ReplayBuffer bounds the unacknowledged bytes its session keeps for
	// retransmission (usl.Config.ReplayBuffer): the replay memory one peer
	// can pin on this host.
	ReplayBuffer int
	// MaxDials bounds the gateway's dials in flight for this peer: a peer
	// opening thousands of connections to silent addresses holds at most
	// this many sockets and goroutines in connect.
	MaxDials int
	// MaxOpens bounds the flows the peer may open through this host's
	// gateway per second (a token bucket with a burst of as many): the
	// peer's share of the host's connect work, refused before any of it
	// is done (gateway.Config.MaxOpens).
	MaxOpens int
}

// Defaults of Limits, next to usl.Config's (usl/config.go) whose per-session
// values they reuse.
const (
	// DefaultMaxFlows: a laptop rarely has more than a few hundred open
	// connections; 4096 leaves room while a hub with 100 peers still
	// bounds them in total far below its file-descriptor limit.
	DefaultMaxFlows = 4096
	// DefaultMaxStreams is the session's own default: each flow is a
	// stream.
	DefaultMaxStreams = usl.DefaultMaxStreams
	// DefaultReplayBuffer is the session's own default. It is a bound,
	// not an allocation: an idle peer holds none of it.
	DefaultReplayBuffer = usl.DefaultReplayBuffer
	// DefaultMaxDials: enough for a burst of connects to slow
	// destinations (64 × the gateway's 10 s dial timeout is 6.4 connects
	// per second to black holes, far more to live ones), small enough that
	// one peer's flood of dials cannot exhaust the hub's sockets.
	DefaultMaxDials = 64
	// DefaultMaxOpens: a browser or a build opens tens of connections a
	// second, a burst of a few hundred at most; 500 a second leaves them
	// room, while on a 2-core hub a peer's flood of 2,000 connects a
	// second would otherwise spend most of the hub's connect work
	// (socket, connect and its packets in the kernel: 40 % of the hub's
	// CPU in the isolation check's profile) and stretch the other peers'
	// round trips (docs/performance.md).
	DefaultMaxOpens = 500
)

// WithDefaults fills zero fields from d, then from the package defaults.
func (l Limits) WithDefaults(d Limits) Limits {
	pick := func(v, dv, pkg int) int {
		switch {
		case v > 0:
			return v
		case dv > 0:
			return dv
		}
		return pkg
	}
	return Limits{
		MaxFlows:     pick(l.MaxFlows, d.MaxFlows, DefaultMaxFlows),
		MaxStreams:   pick(l.MaxStreams, d.MaxStreams, DefaultMaxStreams),
		ReplayBuffer: pick(l.ReplayBuffer, d.ReplayBuffer, DefaultReplayBuffer),
		MaxDials:     pick(l.MaxDials, d.MaxDials, DefaultMaxDials),
		MaxOpens:     pick(l.MaxOpens, d.MaxOpens, DefaultMaxOpens),
	}
}
