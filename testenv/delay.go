package testenv

import (
	"container/heap"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// A delay is a delay line on the ingress of a veth end. The kernel this lab
// runs on (and CI's, the same kind of machine) is built without sch_netem,
// so the delay is made with what it has: an nftables rule in the receiving
// host's prerouting hook hands every IPv4 and IPv6 packet that arrives on
// the end to a netfilter queue (xt NFQUEUE through nft_compat: the kernel
// has no nft "queue" expression either), where the kernel holds it; this
// process reads only the packet's id (no payload, GSO packets unsplit) and
// tells the kernel to let the packet go once its time has come. Packets are
// never copied or rebuilt in Go, and those the line holds when it is
// removed are let go at once.
//
// The order on a link is therefore: the sender's egress (RateLimit's tbf),
// the wire, the receiver's netdev ingress (Blackhole, Loss, ResetTCP), then
// the delay line. Rate limit first, delay second is the order of a real
// path (serialisation at the bottleneck, then propagation), and it keeps
// tbf's queue the one that overflows: a delay in front of tbf would hold
// back tbf's input while its tokens pile up, so packets would leave it in
// bursts above the rate.

// nfqueue protocol numbers (linux/netfilter/nfnetlink_queue.h); x/sys/unix
// does not have them.
const (
	nfqnlMsgPacket  = 0
	nfqnlMsgVerdict = 1
	nfqnlMsgConfig  = 2

	nfqaPacketHdr     = 1
	nfqaVerdictHdr    = 2
	nfqaCfgCmd        = 1
	nfqaCfgParams     = 2
	nfqaCfgQueueMaxln = 3
	nfqaCfgMask       = 4
	nfqaCfgFlags      = 5

	nfqnlCfgCmdBind = 1
	nfqnlCopyMeta   = 1
	nfqaCfgFlagGSO  = 1 << 2
	nfAccept        = 1
)

// maxDelay bounds Delay: a lab link slower than this is a mistake.
const maxDelay = 10 * time.Second

// delayQueueLen is how many packets the kernel holds for one delay line
// before it drops new ones (netem's "limit"): 200 Mbit/s of full-size frames
// for 100 ms, and far more as GSO super-packets.
const delayQueueLen = 1 << 16

// Delay makes every IP packet on the link wait delay ± jitter in each
// direction, so a round trip across the link takes 2×delay more.
// Delay(0, 0) removes it; so does Heal. It composes with RateLimit and the
// nftables faults (see the order above). With jitter each packet gets its
// own delay, uniform in [delay-jitter, delay+jitter], so packets are
// reordered, as with netem. ARP is not delayed; neighbour discovery is.
func (l *LinkPair) Delay(delay, jitter time.Duration) error {
	return l.setDelay(delay, jitter, l.A, l.B)
}

// Delay is LinkPair.Delay for one direction: the packets that arrive at e.
func (e *End) Delay(delay, jitter time.Duration) error {
	return e.link.setDelay(delay, jitter, e)
}

func (l *LinkPair) setDelay(delay, jitter time.Duration, ends ...*End) error {
	what := fmt.Sprintf("delay %v ± %v", delay, jitter)
	if len(ends) == 1 {
		what += " into " + ends[0].String()
	}
	if delay < 0 || jitter < 0 || jitter > delay || delay+jitter > maxDelay {
		return l.fail(fmt.Errorf("%s: %s: want 0 ≤ jitter ≤ delay and delay+jitter ≤ %v", l, what, maxDelay))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range ends {
		if err := e.setDelayLocked(delay, jitter); err != nil {
			return l.fail(fmt.Errorf("%s: %s: %w", l, what, err))
		}
	}
	l.t.Logf("testenv: %s: %s", l, what)
	return nil
}

// setDelayLocked starts, retunes or (delay 0) removes e's delay line.
func (e *End) setDelayLocked(delay, jitter time.Duration) error {
	if delay == 0 {
		return e.removeDelayLocked()
	}
	if e.delay != nil {
		e.delay.set(delay, jitter)
		return nil
	}
	link, err := e.netlink()
	if err != nil {
		return err
	}
	// Interface indexes are unique in the namespace, and so are queues.
	idx := link.Attrs().Index
	if idx > 0xffff {
		return fmt.Errorf("%s: interface index %d does not fit a queue number", e, idx)
	}
	d, err := startDelayLine(e.Host, uint16(idx), delay, jitter)
	if err != nil {
		return fmt.Errorf("%s: %w", e, err)
	}
	if err := e.applyDelayRule(uint32(idx), uint16(idx)); err != nil {
		d.stop()
		return err
	}
	e.delay = d
	return nil
}

// drainTime is how long a line keeps reading after its rule is gone before
// it stops: packets queued just before are still in the socket, and closing
// it would drop them.
const drainTime = 5 * time.Millisecond

// removeDelayLocked takes the rule away first, so no new packet enters the
// queue, reads what was queued before, then lets every held packet go and
// stops the line.
func (e *End) removeDelayLocked() error {
	if e.delay == nil {
		return nil
	}
	err := e.applyDelayRule(0, 0)
	time.Sleep(drainTime)
	e.delay.stop()
	e.delay = nil
	return err
}

func (e *End) delayTableName() string { return NamePrefix + "_delay_" + e.Name }

// applyDelayRule makes e's delay chain queue the packets arriving on
// interface ifindex to queue; ifindex 0 leaves the chain empty (see
// setChainRules for why it stays).
func (e *End) applyDelayRule(ifindex uint32, queue uint16) error {
	accept := nftables.ChainPolicyAccept
	chain := &nftables.Chain{
		Name:     "prerouting",
		Table:    &nftables.Table{Family: nftables.TableFamilyINet, Name: e.delayTableName()},
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookPrerouting,
		Priority: nftables.ChainPriorityRaw,
		Policy:   &accept,
	}
	err := e.setChainRules(chain, func(c *nftables.Conn) {
		if ifindex == 0 {
			return
		}
		// struct xt_NFQ_info_v1 { u16 queuenum; u16 queues_total; }, host
		// byte order; no bypass flag, so without a reader packets are dropped
		// rather than passed undelayed.
		info := xt.Unknown(binary.NativeEndian.AppendUint16(binary.NativeEndian.AppendUint16(nil, queue), 1))
		c.AddRule(&nftables.Rule{Table: chain.Table, Chain: chain, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIF, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(ifindex)},
			&expr.Target{Name: "NFQUEUE", Rev: 1, Info: &info},
		}})
	})
	if err != nil {
		return fmt.Errorf("%s: delay rule: %w", e, err)
	}
	return nil
}

// delayLine is the user-space half of a delay: it learns each queued
// packet's id, and gives the kernel its verdict (accept) when the packet's
// delay has passed.
//
// The releaser sleeps on a timerfd armed for the earliest held packet, not
// on a Go timer: an idle Go runtime sleeps in epoll with millisecond
// timeouts, which made a Go timer fire up to a millisecond late (a 0.5 ms
// delay measured 1.2), while a timerfd wakes the poller when it expires.
// Times are CLOCK_MONOTONIC nanoseconds, the timerfd's own clock.
type delayLine struct {
	conn  *netlink.Conn
	queue uint16
	timer *os.File // timerfd, non-blocking, read through the poller
	tfd   int      // its descriptor, for timerfd_settime

	mu            sync.Mutex
	delay, jitter time.Duration
	held          releaseHeap
	armed         int64 // what the timer is armed for; 0: disarmed or expired
	stopping      bool

	readerDone   chan struct{}
	releaserDone chan struct{}
}

// release is one held packet: its queue id and when it may go.
type release struct {
	at int64 // CLOCK_MONOTONIC ns
	id uint32
}

type releaseHeap []release

func (h releaseHeap) Len() int           { return len(h) }
func (h releaseHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h releaseHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *releaseHeap) Push(x any)        { *h = append(*h, x.(release)) }
func (h *releaseHeap) Pop() any {
	old := *h
	r := old[len(old)-1]
	*h = old[:len(old)-1]
	return r
}

func monotonicNow() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) // cannot fail for this clock
	return ts.Nano()
}

// startDelayLine binds queue in h's namespace and starts its reader and
// releaser.
func startDelayLine(h *Host, queue uint16, delay, jitter time.Duration) (*delayLine, error) {
	tfd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("timerfd: %w", err)
	}
	timer := os.NewFile(uintptr(tfd), "delay-timer")
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(h.ns)})
	if err != nil {
		timer.Close()
		return nil, fmt.Errorf("netfilter queue socket: %w", err)
	}
	d := &delayLine{
		conn: conn, queue: queue, timer: timer, tfd: tfd, delay: delay, jitter: jitter,
		readerDone: make(chan struct{}), releaserDone: make(chan struct{}),
	}
	// A burst of queued packets must not overflow the socket: the kernel
	// drops a packet whose message the socket cannot take. FORCE, because
	// the plain option is capped by net.core.rmem_max.
	if err := forceReadBuffer(conn, 8<<20); err != nil {
		conn.Close()
		timer.Close()
		return nil, fmt.Errorf("netfilter queue socket buffer: %w", err)
	}
	if err := d.configure(); err != nil {
		conn.Close()
		timer.Close()
		return nil, fmt.Errorf("bind netfilter queue %d: %w", queue, err)
	}
	go d.read()
	go d.releaseLoop()
	return d, nil
}

// armLocked sets the timer to expire at the monotonic time at (at once if
// that has passed).
func (d *delayLine) armLocked(at int64) {
	at = max(at, 1) // 0 would disarm it
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(at)}
	if err := unix.TimerfdSettime(d.tfd, unix.TFD_TIMER_ABSTIME, &spec, nil); err != nil {
		// Only a closed descriptor fails, and it closes after both loops.
		panic(fmt.Sprintf("testenv: delay timer: %v", err))
	}
	d.armed = at
}

func forceReadBuffer(conn *netlink.Conn, bytes int) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, bytes)
	}); err != nil {
		return err
	}
	return serr
}

func (d *delayLine) message(typ uint8, attrs []byte) netlink.Message {
	// struct nfgenmsg: family, version, resource id (the queue, big endian).
	data := append([]byte{unix.AF_UNSPEC, unix.NFNETLINK_V0}, binary.BigEndian.AppendUint16(nil, d.queue)...)
	return netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_QUEUE<<8 | uint16(typ)),
			Flags: netlink.Request,
		},
		Data: append(data, attrs...),
	}
}

func (d *delayLine) configure() error {
	bind := netlink.NewAttributeEncoder()
	bind.Bytes(nfqaCfgCmd, []byte{nfqnlCfgCmdBind, 0, 0, 0}) // command, pad, pf (unused)
	params := netlink.NewAttributeEncoder()
	params.ByteOrder = binary.BigEndian
	params.Bytes(nfqaCfgParams, []byte{0, 0, 0, 0, nfqnlCopyMeta}) // copy range 0, metadata only
	params.Uint32(nfqaCfgQueueMaxln, delayQueueLen)
	params.Uint32(nfqaCfgMask, nfqaCfgFlagGSO)
	params.Uint32(nfqaCfgFlags, nfqaCfgFlagGSO) // whole GSO packets, not segments
	for _, ae := range []*netlink.AttributeEncoder{bind, params} {
		b, err := ae.Encode()
		if err != nil {
			return err
		}
		m := d.message(nfqnlMsgConfig, b)
		m.Header.Flags |= netlink.Acknowledge
		if _, err := d.conn.Execute(m); err != nil {
			return err
		}
	}
	return nil
}

func (d *delayLine) set(delay, jitter time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.delay, d.jitter = delay, jitter
}

// read takes queued packets' ids off the socket until it is closed.
func (d *delayLine) read() {
	defer close(d.readerDone)
	for {
		msgs, err := d.conn.Receive()
		if err != nil {
			if errors.Is(err, unix.ENOBUFS) {
				continue
			}
			return // closed by stop
		}
		now := monotonicNow()
		d.mu.Lock()
		for _, m := range msgs {
			id, ok := packetID(m)
			if !ok {
				continue
			}
			wait := d.delay
			if d.jitter > 0 {
				wait += time.Duration(rand.Int64N(int64(2*d.jitter)+1)) - d.jitter
			}
			heap.Push(&d.held, release{at: now + int64(wait), id: id})
		}
		// Only a new earliest packet needs the timer moved (with a fixed
		// delay, only the first after an empty spell).
		if !d.stopping && d.held.Len() > 0 && d.held[0].at != d.armed {
			d.armLocked(d.held[0].at)
		}
		d.mu.Unlock()
	}
}

// packetID returns the queue id of an NFQNL_MSG_PACKET message.
func packetID(m netlink.Message) (uint32, bool) {
	if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_QUEUE<<8|nfqnlMsgPacket) || len(m.Data) < 4 {
		return 0, false
	}
	attrs, err := netlink.UnmarshalAttributes(m.Data[4:])
	if err != nil {
		return 0, false
	}
	for _, a := range attrs {
		// struct nfqnl_msg_packet_hdr { be32 packet_id; be16 hw_protocol; u8 hook; }
		if a.Type&^netlink.Nested == nfqaPacketHdr && len(a.Data) >= 4 {
			return binary.BigEndian.Uint32(a.Data), true
		}
	}
	return 0, false
}

// releaseLoop accepts each held packet when its time comes; once stopping,
// it accepts everything still held and returns.
func (d *delayLine) releaseLoop() {
	defer close(d.releaserDone)
	var (
		tick [8]byte // the timerfd's expiry count
		due  []netlink.Message
	)
	for {
		if _, err := d.timer.Read(tick[:]); err != nil {
			return // cannot happen before stop: the timer closes after this loop
		}
		d.mu.Lock()
		now := monotonicNow()
		due = due[:0]
		for d.held.Len() > 0 && (d.stopping || d.held[0].at <= now) {
			r := heap.Pop(&d.held).(release)
			due = append(due, d.verdict(r.id))
		}
		d.armed = 0 // expired
		if d.held.Len() > 0 && !d.stopping {
			d.armLocked(d.held[0].at)
		}
		stopping := d.stopping
		d.mu.Unlock()
		if len(due) > 0 {
			// A failed send leaves packets with the kernel until the line
			// stops (the socket closes, and the kernel drops them); there is
			// nobody to tell in between, so it is not retried.
			_, _ = d.conn.SendMessages(due)
		}
		if stopping {
			return
		}
	}
}

func (d *delayLine) verdict(id uint32) netlink.Message {
	// struct nfqnl_msg_verdict_hdr { be32 verdict; be32 id; }
	hdr := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, nfAccept), id)
	attrs, _ := netlink.MarshalAttributes([]netlink.Attribute{{Type: nfqaVerdictHdr, Data: hdr}})
	return d.message(nfqnlMsgVerdict, attrs)
}

// stop lets every held packet go, closes the socket and waits for both
// goroutines. The releaser's last verdicts must come before the close: the
// kernel drops what it still holds when the socket goes.
func (d *delayLine) stop() {
	d.mu.Lock()
	d.stopping = true
	d.armLocked(1) // now: the releaser wakes, lets everything go, returns
	d.mu.Unlock()
	<-d.releaserDone
	d.conn.Close()
	<-d.readerDone
	d.timer.Close()
}

// stopDelays removes the link's delay lines (test cleanup).
func (l *LinkPair) stopDelays() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range []*End{l.A, l.B} {
		if err := e.removeDelayLocked(); err != nil {
			l.t.Logf("testenv: %v", err)
		}
	}
}
