package flow

import (
	"context"
	"errors"
	"fmt"
	"net"
)

// Conn is the far half of one flow, as a Dialer returns it.
//
// For TCP it is a byte stream. For UDP and ICMP its bytes are datagrams,
// each written and read as one WriteDatagram record; for ICMP each datagram
// is one echo message (type, code, checksum, identifier, sequence, data) of
// the destination's family, and the exporting side answers with the reply
// it got, or with nothing.
//
// Read returns io.EOF once the far side closed its direction (CloseWrite),
// and an error matching ErrAborted (errors.Is) once it aborted. Write blocks
// while the far side is unreachable; it does not fail because a link died.
// CloseWrite sends end-of-stream: the far side reads EOF after the bytes
// written before it, and may still write. Abort resets both directions at
// once, as a TCP RST does; the far side sees ErrAborted. Close ends the flow
// in both directions gracefully (CloseWrite, then stop reading). After Close
// or Abort every method but Close and Abort returns an error; calling
// either again is harmless.
type Conn interface {
	net.Conn
	CloseWrite() error
	Abort() error
}

// Dialer opens the far half of a flow. DialFlow returns once the
// destination accepted (TCP) or the flow is open (UDP, ICMP), so a front end
// can keep the application's connect semantics: answer a SYN, or a SOCKS
// CONNECT, only after the real destination did. A failed dial returns an
// error matching one of the Err* sentinels below. While the far side is
// unreachable DialFlow waits; ctx bounds the wait, and DialFlow returns
// promptly once ctx is done.
type Dialer interface {
	DialFlow(ctx context.Context, dest Dest) (Conn, error)
}

// Reason is why a flow could not be opened or was ended by the far side.
type Reason uint8

const (
	Aborted        Reason = iota // reset by the far side or its application
	Refused                      // the destination refused the connection
	Unreachable                  // no route to the destination, or the name does not resolve
	Forbidden                    // the destination is outside what the far side exports to us
	Timeout                      // the destination did not answer in time
	PeerRestarted                // the far side lost its state: the flow was fenced
	Limit                        // a limit (flows, streams) was reached
	SessionTimeout               // the far side was unreachable for longer than allowed
)

var reasonNames = [...]string{"aborted", "refused", "unreachable", "forbidden", "timeout", "peer-restarted", "limit", "session-timeout"}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason-%d", uint8(r))
}

// Error is a dial outcome or a far-side reset. errors.Is matches it against
// the sentinels by Reason; Err keeps the carrier's own error for logs.
type Error struct {
	Reason Reason
	Err    error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("flow %s: %v", e.Reason, e.Err)
	}
	return "flow " + e.Reason.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches any *Error with the same Reason.
func (e *Error) Is(target error) bool {
	var t *Error
	return errors.As(target, &t) && t.Err == nil && t.Reason == e.Reason
}

// Sentinels for errors.Is.
var (
	ErrAborted        = &Error{Reason: Aborted}
	ErrRefused        = &Error{Reason: Refused}
	ErrUnreachable    = &Error{Reason: Unreachable}
	ErrForbidden      = &Error{Reason: Forbidden}
	ErrTimeout        = &Error{Reason: Timeout}
	ErrPeerRestarted  = &Error{Reason: PeerRestarted}
	ErrLimit          = &Error{Reason: Limit}
	ErrSessionTimeout = &Error{Reason: SessionTimeout}
)
