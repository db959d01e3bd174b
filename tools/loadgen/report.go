package loadgen

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/usltun/usltun/internal/human"
	"golang.org/x/sys/unix"
)

// ErrorEvent is one error an application would have seen.
type ErrorEvent struct {
	Flow   int       `json:"flow"`
	Side   string    `json:"side"`  // "client" or "server"
	Op     string    `json:"op"`    // dial, write, read, shutdown, verify, report
	Errno  string    `json:"errno"` // ECONNRESET, EPIPE, ETIMEDOUT, ...; see Errno
	Offset int64     `json:"offset"`
	At     time.Time `json:"at"`
	Msg    string    `json:"msg"`
}

func (e ErrorEvent) String() string {
	return fmt.Sprintf("flow %d %s %s at byte %d: %s (%s)", e.Flow, e.Side, e.Op, e.Offset, e.Errno, e.Msg)
}

// Errno names the cause of err as an application sees it: the errno name
// for system call errors (ECONNRESET, EPIPE, ECONNREFUSED, ETIMEDOUT, ...),
// and for conditions without an errno one of
//
//	EOF       the peer closed before all data arrived
//	DEADLINE  a deadline set by the run expired (os.ErrDeadlineExceeded)
//	CANCELED  the run was canceled
//	MISMATCH  received bytes differ from the expected stream
//	PROTO     the peer broke the loadgen protocol
//	OTHER     anything else
func Errno(err error) string {
	var en syscall.Errno
	switch {
	case errors.As(err, &en):
		if name := unix.ErrnoName(en); name != "" {
			return name
		}
		return fmt.Sprintf("errno %d", int(en))
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "EOF"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "DEADLINE"
	case errors.Is(err, errCanceled), errors.Is(err, net.ErrClosed):
		return "CANCELED"
	case errors.Is(err, errMismatch):
		return "MISMATCH"
	case errors.Is(err, errBadHeader), errors.Is(err, errProto):
		return "PROTO"
	}
	return "OTHER"
}

var (
	errCanceled = errors.New("run canceled")
	errMismatch = errors.New("data differs from the expected stream")
	errProto    = errors.New("protocol violation")
)

// Half is what one end knows about one direction of a flow.
type Half struct {
	Bytes    int64    `json:"bytes"`
	SHA256   string   `json:"sha256,omitempty"`
	Complete bool     `json:"complete"`          // sender: FIN sent; receiver: FIN received
	Mismatch int64    `json:"mismatch"`          // receiver: offset of the first wrong byte, -1 if none
	Timeline timeline `json:"timeline,omitzero"` // receiver only
}

// EndReport is one end's view of a flow; the server sends its own in the
// report connection.
type EndReport struct {
	Flow   int          `json:"flow"`
	Sent   Half         `json:"sent"`
	Recv   Half         `json:"recv"`
	Errors []ErrorEvent `json:"errors,omitempty"`
	Ended  bool         `json:"ended"`
}

// Direction is the verdict on one direction of a flow.
type Direction struct {
	Sent         int64         `json:"sent"`
	Received     int64         `json:"received"`
	SentSHA256   string        `json:"sent_sha256,omitempty"`
	RecvSHA256   string        `json:"recv_sha256,omitempty"`
	Match        bool          `json:"match"`    // complete on both ends, same count and hash, no mismatch
	Mismatch     int64         `json:"mismatch"` // first wrong byte, -1 if none
	LongestStall time.Duration `json:"longest_stall"`
	First        time.Time     `json:"first_byte,omitzero"`
	Last         time.Time     `json:"last_byte,omitzero"`
	tl           timeline
}

// FlowReport is the verdict on one flow.
type FlowReport struct {
	Flow   int          `json:"flow"`
	Up     Direction    `json:"up"`   // client → server
	Down   Direction    `json:"down"` // server → client
	Errors []ErrorEvent `json:"errors,omitempty"`
	// Connect is how long the dial took (connect() latency, or how long a
	// connect attempt waited out a partition).
	Connect time.Duration `json:"connect"`
	// ServerSeen is false when the server never reported this flow.
	ServerSeen bool `json:"server_seen"`
}

// Recovery is the delay from one heal to the first new byte, the worst over
// all flow directions that were still transferring at the heal.
type Recovery struct {
	Heal      time.Time     `json:"heal"`
	FirstByte time.Time     `json:"first_byte,omitzero"`
	Delay     time.Duration `json:"delay"`     // -1: some direction never got a byte after the heal
	Flow      int           `json:"flow"`      // the flow with the worst delay
	Direction string        `json:"direction"` // up or down
}

// Report is the result of a Run.
type Report struct {
	Mode      string        `json:"mode"`
	Dirs      string        `json:"dirs"`
	Flows     []FlowReport  `json:"flows"`
	Start     time.Time     `json:"start"`
	Elapsed   time.Duration `json:"elapsed"`
	BytesUp   int64         `json:"bytes_up"`   // received by the server
	BytesDown int64         `json:"bytes_down"` // received by the client
	// BitsPerSec is the total received (both directions) over Elapsed.
	BitsPerSec   float64       `json:"bits_per_sec"`
	LongestStall time.Duration `json:"longest_stall"`
	Errors       []ErrorEvent  `json:"errors"`
	Recoveries   []Recovery    `json:"recoveries,omitempty"`
	Latency      *Latency      `json:"latency,omitempty"`
	// Verified: every flow matched in every enabled direction and no error
	// occurred. With NoVerify only byte counts and clean ends were compared.
	Verified bool `json:"verified"`
	NoVerify bool `json:"no_verify,omitempty"`
}

// Latency summarises request/response round trips.
type Latency struct {
	Count uint64        `json:"count"`
	P50   time.Duration `json:"p50"`
	P99   time.Duration `json:"p99"`
	Max   time.Duration `json:"max"`
	// Slowest are the five longest round trips with when they began,
	// longest first.
	Slowest []Sample `json:"slowest,omitempty"`
}

// Errnos lists the errno names of all errors, in order.
func (r *Report) Errnos() []string {
	out := make([]string, len(r.Errors))
	for i, e := range r.Errors {
		out[i] = e.Errno
	}
	return out
}

// HasErrno reports whether any error has the given errno name.
func (r *Report) HasErrno(name string) bool {
	for _, e := range r.Errors {
		if e.Errno == name {
			return true
		}
	}
	return false
}

// MaxRecovery is the worst recovery delay, or -1 if any heal was never
// recovered from; 0 without heals.
func (r *Report) MaxRecovery() time.Duration {
	var worst time.Duration
	for _, rc := range r.Recoveries {
		if rc.Delay < 0 {
			return -1
		}
		worst = max(worst, rc.Delay)
	}
	return worst
}

// String renders the report for humans.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d flows, mode %s, directions %s, %v\n", len(r.Flows), r.Mode, r.Dirs, r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(&b, "received: up %s, down %s, %s\n", human.Bytes(r.BytesUp), human.Bytes(r.BytesDown), human.Rate(r.BitsPerSec))
	var connect time.Duration
	for _, f := range r.Flows {
		connect = max(connect, f.Connect)
	}
	fmt.Fprintf(&b, "longest stall: %v, slowest connect: %v\n", r.LongestStall.Round(time.Microsecond), connect.Round(time.Microsecond))
	if r.Latency != nil {
		fmt.Fprintf(&b, "latency: %d round trips, p50 %v, p99 %v, max %v\n", r.Latency.Count, r.Latency.P50, r.Latency.P99, r.Latency.Max)
	}
	for _, rc := range r.Recoveries {
		if rc.Delay < 0 {
			fmt.Fprintf(&b, "recovery after heal at %s: never (flow %d %s)\n", rc.Heal.Format("15:04:05.000"), rc.Flow, rc.Direction)
			continue
		}
		fmt.Fprintf(&b, "recovery after heal at %s: %v (flow %d %s)\n", rc.Heal.Format("15:04:05.000"), rc.Delay.Round(time.Microsecond), rc.Flow, rc.Direction)
	}
	mismatched := 0
	for _, f := range r.Flows {
		for _, d := range []*Direction{&f.Up, &f.Down} {
			if !d.Match {
				mismatched++
			}
			if d.Mismatch >= 0 {
				fmt.Fprintf(&b, "flow %d: data differs from byte %d\n", f.Flow, d.Mismatch)
			}
		}
	}
	fmt.Fprintf(&b, "errors: %d\n", len(r.Errors))
	for _, e := range r.Errors {
		fmt.Fprintf(&b, "  %s\n", e)
	}
	switch {
	case r.Verified && r.NoVerify:
		b.WriteString("complete: byte counts equal on every flow, no errors (contents not checked: no-verify)\n")
	case r.Verified:
		b.WriteString("verified: SHA-256 identical on every flow, no errors\n")
	default:
		fmt.Fprintf(&b, "NOT verified: %d flow directions incomplete or different, %d errors\n", mismatched, len(r.Errors))
	}
	return b.String()
}
