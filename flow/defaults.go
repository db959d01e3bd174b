package flow

import "time"

// Timeouts both ends of a flow apply, defined here once so that the front
// ends (netstack) and the exporting side (gateway) agree.
const (
	// DefaultHalfCloseTimeout bounds how long a flow stays half-closed,
	// waiting for the second FIN, before it is torn down.
	DefaultHalfCloseTimeout = 2 * time.Minute
	// DefaultUDPIdleTimeout closes a UDP flow with no datagram either way.
	DefaultUDPIdleTimeout = 60 * time.Second
)
