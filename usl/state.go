package usl

import (
	"fmt"
	"time"
)

// SessionState is where a session is in its life, as `usltun status` shows it.
type SessionState int

const (
	Connecting   SessionState = iota // no path has come up yet
	Up                               // a path is attached
	Reconnecting                     // the path died; redialing (dialer) or waiting for a resume (listener)
	Fenced                           // the peer restarted; old streams failed (dialer: until the fresh incarnation is up)
	Closed                           // ended for good: Close, session timeout, or fenced on the listening side
)

var stateNames = [...]string{"connecting", "up", "reconnecting", "fenced", "closed"}

func (s SessionState) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state-%d", int(s))
}

// Stats is a snapshot of a session, everything `usltun status` prints.
type Stats struct {
	State         SessionState
	SessionID     string        // short hex of the current incarnation's id
	Remote        string        // remote address of the active path, "" without one
	RTT           time.Duration // smoothed keepalive round-trip time
	BytesIn       uint64        // stream payload bytes received in order
	BytesOut      uint64        // stream payload bytes written by the application
	Unacked       int           // stream bytes in the replay buffer, not yet acked
	Retransmitted uint64        // frame bytes sent again after a reconnect
	Reconnects    uint64        // paths attached after the first
	Fences        uint64        // times the peer was found restarted
	Rekeys        uint64        // in-band rekeys of paths completed
	LastError     string        // why the last path died or the last attempt failed
	Streams       int           // open streams
	PeerKey       PublicKey
	LastHandshake time.Time // when the latest path completed its handshake; zero before the first
	Paths         []PathStats
}

// PathStats describes one path of a session: a live one, or (dialer) an
// endpoint that has no connection now (State PathDead, with LastError).
type PathStats struct {
	ID            uint32
	Local         string // local address (a dead endpoint: its bind, if any)
	Remote        string
	State         PathState
	SRTT, RTTVar  time.Duration
	Rate          float64 // delivery-rate estimate, bytes/s
	InFlight      int     // frame bytes sent on the path and not yet acked
	Queued        int     // frame bytes scheduled onto the path and not yet sent
	Window        int     // what schedulers with room checks let it hold (in flight + queued)
	BytesSent     uint64  // frame bytes sent on the path, headers included
	BytesReceived uint64  // frame bytes received on the path
	Reinjected    uint64  // bytes sent again on this path: reinjections, hedged copies, resends after a reconnect
	Stalls        uint64  // times the path stalled and its frames were reinjected elsewhere
	LastError     string
}
