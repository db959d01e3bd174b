package usl

import (
	"errors"
	"fmt"
)

// ResetCode says why a stream was aborted. It travels in RESET frames, so
// the values are part of the wire protocol and must never be renumbered.
type ResetCode uint8

const (
	ResetAborted        ResetCode = 0 // the application aborted the stream (an RST)
	ResetRefused        ResetCode = 1 // the destination refused the connection
	ResetUnreachable    ResetCode = 2 // the destination could not be reached
	ResetForbidden      ResetCode = 3 // the destination is outside what the peer exports
	ResetTimeout        ResetCode = 4 // dialing the destination timed out
	ResetPeerRestarted  ResetCode = 5 // the session was fenced: the peer lost its state
	ResetLimit          ResetCode = 6 // a limit (streams per session, flows) was reached
	ResetSessionTimeout ResetCode = 7 // the session gave up after its session timeout
)

var resetNames = [...]string{
	ResetAborted:        "aborted",
	ResetRefused:        "refused",
	ResetUnreachable:    "unreachable",
	ResetForbidden:      "forbidden",
	ResetTimeout:        "timeout",
	ResetPeerRestarted:  "peer-restarted",
	ResetLimit:          "limit",
	ResetSessionTimeout: "session-timeout",
}

func (c ResetCode) String() string {
	if int(c) < len(resetNames) {
		return resetNames[c]
	}
	return fmt.Sprintf("reset-code-%d", uint8(c))
}

// ResetError is the error a stream returns once it was reset, by the peer or
// locally. errors.Is matches it against the sentinel errors below by code.
type ResetError struct {
	Code   ResetCode
	Remote bool // the peer sent the reset
}

func (e *ResetError) Error() string {
	side := "local"
	if e.Remote {
		side = "remote"
	}
	return fmt.Sprintf("usl: stream reset (%s, %s)", e.Code, side)
}

// Is lets errors.Is(err, ErrPeerRestarted) and friends match any ResetError
// with the same code, wherever it came from.
func (e *ResetError) Is(target error) bool {
	t, ok := target.(*ResetError)
	return ok && t.Code == e.Code
}

// Sentinels for errors.Is. Their Remote field is ignored by the match.
var (
	ErrAborted        = &ResetError{Code: ResetAborted}
	ErrRefused        = &ResetError{Code: ResetRefused}
	ErrUnreachable    = &ResetError{Code: ResetUnreachable}
	ErrForbidden      = &ResetError{Code: ResetForbidden}
	ErrTimeout        = &ResetError{Code: ResetTimeout}
	ErrPeerRestarted  = &ResetError{Code: ResetPeerRestarted}
	ErrLimit          = &ResetError{Code: ResetLimit}
	ErrSessionTimeout = &ResetError{Code: ResetSessionTimeout}
)

// ErrSessionClosed is returned by operations on a session closed locally.
var ErrSessionClosed = errors.New("usl: session closed")
