package usl

import (
	"fmt"
	"math"
	"time"
)

// PathState is a path's health as the session sees it.
type PathState uint8

const (
	// PathUp: the path carries frames and its frames are being acked.
	PathUp PathState = iota
	// PathProbing: frames (or a PING) sent on the path went unacked for
	// the stall interval, max(3×srtt, Config.ReinjectFloor). What sat on
	// it was reinjected on the other paths; it returns to PathUp at the
	// first ack progress and is closed after Config.DeadInterval of
	// silence.
	PathProbing
	// PathBackup: a path the dialer marked as a last resort; schedulers
	// use it only when no path is up.
	PathBackup
	// PathDead: no connection (between the death of one and the
	// handshake of the next). Schedulers never see dead paths; Stats
	// reports them.
	PathDead
)

func (s PathState) String() string {
	switch s {
	case PathUp:
		return "up"
	case PathProbing:
		return "probing"
	case PathBackup:
		return "backup"
	case PathDead:
		return "dead"
	}
	return fmt.Sprintf("PathState(%d)", uint8(s))
}

// PathInfo is what a scheduler sees of one live path. It is a snapshot
// taken under the session lock for one call.
type PathInfo struct {
	ID         uint32        // the path id of the hello
	Preference int           // 0 is the first --peer (endpoint order; listener: from the path id)
	State      PathState     // PathUp, PathProbing or PathBackup
	SRTT       time.Duration // smoothed RTT of this path (PING/PONG, EWMA 1/8); 0 before the first sample
	RTTVar     time.Duration // RTT variation (EWMA 1/4 of |sample - srtt|)
	MinRTT     time.Duration // lowest RTT sample of the last 10 s; 0 before the first
	Rate       float64       // delivery-rate estimate in bytes/s (acked bytes per interval, EWMA); 0 before the first sample
	InFlight   int           // frame bytes sent on this path and not yet acked or selectively acked, plus those scheduled onto it and not sent yet
	Window     int           // bytes the path is granted: max(256 KiB, 2×Rate×MinRTT); a session's only path: the replay buffer
}

// Room reports whether the path may take n more bytes now.
func (p *PathInfo) Room(n int) bool { return p.InFlight+n <= p.Window || p.InFlight == 0 }

// Frame is what a scheduler sees of one sequenced frame.
type Frame struct {
	Seq    uint64        // session seq
	Stream uint32        // stream id; 0 for session frames (CLOSE)
	Len    int           // encoded size (header and payload): what it costs a path
	Class  string        // the stream's class (Stream.SetScheduler); "" if none
	Age    time.Duration // since it was first sent; 0 when it was never sent
	SentOn PathSet       // the paths (indices into the slice given) that already carried it
}

// PathSet is a set of paths: bit i stands for paths[i] of the slice the
// scheduler was given.
type PathSet uint64

// Has reports whether path i is in the set.
func (s PathSet) Has(i int) bool { return s&(1<<uint(i)) != 0 }

// With returns the set plus path i.
func (s PathSet) With(i int) PathSet { return s | 1<<uint(i) }

// A Scheduler decides which paths carry each sequenced frame of a session
// (or of one stream, Stream.SetScheduler).
//
// Pick is called when a frame is first due to be sent, and again when
// the paths that carried it died or stalled (reinjection: then the frame
// shows its SentOn and paths shows the stalled ones as PathProbing, or not
// at all). paths holds the session's live paths in preference order, never
// empty; no path appears twice. Pick returns the paths that must carry
// the frame now. The set may hold several paths (redundancy: the receiver
// keeps the first copy and drops the others); bits outside paths are
// ignored. An empty set defers the frame: it stays queued, and Pick is
// asked again when an ack frees room or a path comes up; frames behind
// it of the same scheduler wait too, which is how a scheduler applies
// back-pressure. A scheduler must never defer for ever while some path is
// PathUp with nothing in flight.
//
// Pick runs with the session lock held, once per frame per decision, on a
// writer goroutine: it must be quick, must not block, and must not call
// back into the session. It may keep state (a round-robin position, say);
// a Scheduler value is used by one session at a time unless it says it is
// safe for more, as all the shipped ones are (they are stateless).
//
// What Pick does not decide: per-stream order and duplicates are the
// receiver's business, acks and SACK free frames, and reinjection after a
// stall is done by the session whatever the scheduler (a frame on a path
// that stalled is offered to Pick again).
type Scheduler interface {
	// Name is the scheduler's name in configuration, policy and status.
	Name() string
	Pick(f *Frame, paths []PathInfo) PathSet
}

// A LateScheduler is also asked about frames that stay unacked: Late is
// called (at most every reinjectTick, for the oldest unacked frames) with
// the frame's Age and SentOn, and returns extra paths to copy it to now,
// or 0. This is the hedge: redundancy paid only when a path is slow.
type LateScheduler interface {
	Scheduler
	Late(f *Frame, paths []PathInfo) PathSet
}

// The shipped schedulers.
var (
	_ Scheduler     = Failover{}
	_ Scheduler     = LowRTT{}
	_ Scheduler     = Balance{}
	_ Scheduler     = Mirror{}
	_ LateScheduler = Hedge{}
)

// SchedulerNames lists the shipped schedulers, in the order of --help.
var SchedulerNames = []string{"failover", "lowrtt", "balance", "mirror", "hedge"}

// NewScheduler returns the shipped scheduler of that name.
func NewScheduler(name string) (Scheduler, error) {
	switch name {
	case "failover":
		return Failover{}, nil
	case "lowrtt":
		return LowRTT{}, nil
	case "balance":
		return Balance{}, nil
	case "mirror":
		return Mirror{}, nil
	case "hedge":
		return Hedge{}, nil
	}
	return nil, fmt.Errorf("unknown scheduler %q (want one of failover, lowrtt, balance, mirror, hedge)", name)
}

// usable returns the paths a frame may go on: the up ones, else the
// backup ones, else the probing ones (a stalled path is better than none:
// it may only be slow).
func usable(paths []PathInfo) PathSet {
	var up, backup, probing PathSet
	for i := range paths {
		switch paths[i].State {
		case PathUp:
			up = up.With(i)
		case PathBackup:
			backup = backup.With(i)
		case PathProbing:
			probing = probing.With(i)
		}
	}
	switch {
	case up != 0:
		return up
	case backup != 0:
		return backup
	}
	return probing
}

// notSent drops the paths that already carried f, unless that leaves
// nothing.
func notSent(f *Frame, set PathSet) PathSet {
	if s := set &^ f.SentOn; s != 0 {
		return s
	}
	return set
}

// Failover sends everything on the most preferred usable path (the first
// --peer that is up); the others idle as hot standbys with keepalives.
type Failover struct{}

func (Failover) Name() string { return "failover" }

func (Failover) Pick(f *Frame, paths []PathInfo) PathSet {
	set := notSent(f, usable(paths))
	best := -1
	for i := range paths {
		if set.Has(i) && (best < 0 || paths[i].Preference < paths[best].Preference) {
			best = i
		}
	}
	if best < 0 {
		return 0
	}
	return PathSet(0).With(best)
}

// LowRTT sends each frame on the usable path with the lowest srtt that
// has room in its window, like MPTCP's default scheduler. When no path
// has room the frame waits for an ack.
type LowRTT struct{}

func (LowRTT) Name() string { return "lowrtt" }

func (LowRTT) Pick(f *Frame, paths []PathInfo) PathSet {
	i := lowest(paths, notSent(f, usable(paths)), f.Len, true)
	if i < 0 {
		return 0
	}
	return PathSet(0).With(i)
}

// lowest is the path of set with the lowest srtt (unmeasured counts as
// slowest, then preference breaks ties); with room, only paths with room
// for n bytes.
func lowest(paths []PathInfo, set PathSet, n int, room bool) int {
	best := -1
	key := func(i int) time.Duration {
		if paths[i].SRTT == 0 {
			return math.MaxInt64
		}
		return paths[i].SRTT
	}
	for i := range paths {
		if !set.Has(i) || room && !paths[i].Room(n) {
			continue
		}
		if best < 0 || key(i) < key(best) || key(i) == key(best) && paths[i].Preference < paths[best].Preference {
			best = i
		}
	}
	return best
}

// Balance spreads frames over the usable paths in proportion to their
// measured delivery rate, so one flow gets about the sum of the links.
// Each frame goes on the path where it would arrive first: its queue
// ahead (in-flight bytes plus the frame) drained at the path's delivery
// rate, plus half its srtt (the earliest-completion-first rule of MPTCP's
// ECF scheduler). When that path has no room the frame waits for it
// instead of taking a slower path with room. A path then carries in
// proportion to its rate, and a slow path gets a frame only when the fast
// one's queue would make it later, so the receiver's per-stream order
// waits little for the slow path. (Taking the best path with room, the
// rule before, put a bulk flow's overflow on a 100 ms path beside a 1 ms
// one, whose stalls were reinjected in bursts ahead of a mirrored rr
// flow.) (The in-flight share of each path's window, the rule before,
// gave paths of 200 and 50 Mbit/s equal shares while both windows sat at
// the 256 KiB floor: one flow got 193–209 Mbit/s of 250 in
// TestE2EMultipath/row3_balance_200_50.) While a usable path has no rate
// or srtt sample yet, every path is ranked by its in-flight share of its
// window instead, and so measured by what it carries.
type Balance struct{}

func (Balance) Name() string { return "balance" }

func (Balance) Pick(f *Frame, paths []PathInfo) PathSet {
	set := notSent(f, usable(paths))
	measured := true
	for i := range paths {
		if set.Has(i) && (paths[i].Rate <= 0 || paths[i].SRTT == 0) {
			measured = false
		}
	}
	best := -1
	var bestCost float64
	for i := range paths {
		p := &paths[i]
		if !set.Has(i) {
			continue
		}
		var cost float64
		if measured {
			// The rate counts as at least one frame per srtt: a path
			// whose last sample was low (it carried a frame now and
			// then) costs at most 1.5 srtt while empty, so it is never
			// starved by its own estimate.
			rtt := p.SRTT.Seconds()
			rate := max(p.Rate, float64(f.Len)/rtt)
			cost = float64(p.InFlight+f.Len)/rate + rtt/2
		} else if p.Room(f.Len) {
			cost = float64(p.InFlight+f.Len) / float64(max(p.Window, 1))
		} else {
			continue
		}
		if best < 0 || cost < bestCost {
			best, bestCost = i, cost
		}
	}
	// The earliest completion is on a path without room: wait for its
	// acks (the session asks again when they come) rather than send on a
	// path where the frame would arrive later, which only makes the
	// receiver's per-stream order wait for it (ECF's rule).
	if best < 0 || !paths[best].Room(f.Len) {
		return 0
	}
	return PathSet(0).With(best)
}

// Mirror sends every frame on every live path, probing ones included;
// the receiver keeps the first copy. A blackholed link then costs nothing,
// at the price of sending everything once per path. Probing paths are
// included because stall detection can be wrong under load (a saturated
// link's PONGs queue behind its data), and a copy on a path that is only
// slow is cheap next to a frame held back from the one that works.
// Mirror never defers and ignores room: a room check would hold frames
// back from the live path whenever the dead one still had room (measured
// worse: longest bulk stall 435 ms instead of 73 ms in
// TestE2EMultipath/row1). Its cost is bounded by the replay buffer and the
// stream windows.
type Mirror struct{}

func (Mirror) Name() string { return "mirror" }

func (Mirror) Pick(f *Frame, paths []PathInfo) PathSet {
	var all PathSet
	for i := range paths {
		all = all.With(i)
	}
	return notSent(f, all)
}

// Hedge sends each frame on the lowest-RTT path, and a copy on the next
// best path only when the frame is not acked within srtt + 2×rttvar of
// the path it went on, but never later than twice that path's minimum
// RTT (plus, either way, the peer's ack delay): redundancy paid only when
// a path misbehaves, as getlantern/multipath does. The cap is what makes
// hedging work on a lossy link: a path is a TCP connection, so a PONG
// that waited for a retransmission is an RTT sample of hundreds of ms,
// and a few of them inflate srtt and rttvar until the copy came about as
// late as the retransmission it should beat (rr p99 140 ms against
// lowrtt's 230 ms with 10 % loss, TestE2EMultipath/row6).
type Hedge struct{}

func (Hedge) Name() string { return "hedge" }

func (Hedge) Pick(f *Frame, paths []PathInfo) PathSet {
	return LowRTT{}.Pick(f, paths)
}

func (Hedge) Late(f *Frame, paths []PathInfo) PathSet {
	var due time.Duration
	for i := range paths {
		if f.SentOn.Has(i) {
			d := paths[i].SRTT + 2*paths[i].RTTVar
			if m := paths[i].MinRTT; m > 0 {
				d = min(d, 2*m)
			}
			if d == 0 || due != 0 && d >= due {
				continue
			}
			due = d
		}
	}
	if f.SentOn == 0 || due == 0 || f.Age < due+hedgeAckSlack {
		return 0
	}
	i := lowest(paths, usable(paths)&^f.SentOn, f.Len, false)
	if i < 0 {
		return 0
	}
	return PathSet(0).With(i)
}

// hedgeAckSlack is the peer's ack delay (DefaultAckDelay) plus a little:
// an ack can lag a frame by that much on a perfectly healthy path, so
// hedging earlier would copy every frame of an idle-then-bursty flow.
const hedgeAckSlack = DefaultAckDelay + 2*time.Millisecond
