package testenv

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// faultSet is the nftables part of a link's fault state. It is rendered as
// one netdev-family table per veth end with a single ingress chain, so every
// change is an atomic replacement of that chain's rules and trivially
// idempotent.
//
// Ingress on both ends covers both directions of the wire: A→B packets are
// handled at B's ingress and B→A packets at A's. Rules, in order:
//
//	blackhole:   drop                         (everything, ARP and ND included)
//	reset ports: tcp sport|dport P, not RST → reject with tcp reset
//	loss:        numgen random mod 100 < pct → drop
//
// A reset is sent back out of the interface the packet came in on, so the
// sender of each packet that hits the rule gets an RST: with traffic both
// ways, both ends of an established connection see ECONNRESET, as behind a
// NAT box that lost its state.
type faultSet struct {
	blackhole bool
	resets    map[uint16]bool
	lossPct   int
}

const tcpFlagRST = 0x04

func (f faultSet) empty() bool { return !f.blackhole && len(f.resets) == 0 && f.lossPct == 0 }

func (f faultSet) clone() faultSet {
	f.resets = maps.Clone(f.resets)
	return f
}

// Blackhole silently drops every packet on the link, both directions.
func (l *LinkPair) Blackhole() error {
	return l.updateFaults("blackhole", func(f *faultSet) { f.blackhole = true })
}

// ResetTCP answers every TCP segment on the link to or from port with an
// RST, until Heal. Established connections using the port die with
// ECONNRESET at both ends (each end as soon as it sends); new connections
// to the port are refused. It takes precedence over Blackhole: Blackhole
// then ResetTCP is a path that went silent with data in flight, then a
// middlebox reset it, so that data is lost for certain.
func (l *LinkPair) ResetTCP(port uint16) error {
	return l.updateFaults(fmt.Sprintf("reset tcp port %d", port), func(f *faultSet) {
		if f.resets == nil {
			f.resets = map[uint16]bool{}
		}
		f.resets[port] = true
	})
}

// Loss drops each packet on the link with probability pct/100, chosen
// independently per packet and direction. Loss(0) turns it off.
func (l *LinkPair) Loss(pct int) error {
	if pct < 0 || pct > 100 {
		return l.fail(fmt.Errorf("loss %d%%: want 0..100", pct))
	}
	return l.updateFaults(fmt.Sprintf("loss %d%%", pct), func(f *faultSet) { f.lossPct = pct })
}

func (l *LinkPair) updateFaults(what string, change func(*faultSet)) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	next := l.faults.clone()
	change(&next)
	if err := l.applyFaults(next); err != nil {
		return l.fail(fmt.Errorf("%s: %s: %w", l, what, err))
	}
	l.faults = next
	l.t.Logf("testenv: %s: %s", l, what)
	return nil
}

func (l *LinkPair) applyFaults(f faultSet) error {
	for _, e := range []*End{l.A, l.B} {
		if err := e.applyFaults(f); err != nil {
			return err
		}
	}
	return nil
}

// tableName is the end's nftables table. The NamePrefix lets a leak check
// find it.
func (e *End) tableName() string { return NamePrefix + "_" + e.Name }

func (e *End) applyFaults(f faultSet) error {
	accept := nftables.ChainPolicyAccept
	chain := &nftables.Chain{
		Name:     "ingress",
		Table:    &nftables.Table{Family: nftables.TableFamilyNetdev, Name: e.tableName()},
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookIngress,
		Priority: nftables.ChainPriorityRef(-500),
		Device:   e.Name,
		Policy:   &accept,
	}
	if err := e.setChainRules(chain, func(c *nftables.Conn) { addFaultRules(c, chain, f) }); err != nil {
		return fmt.Errorf("%s: fault rules: %w", e, err)
	}
	return nil
}

// setChainRules makes the rules of the base chain ch (in its table, in e's
// host) exactly those add adds, in one transaction. The table and chain are
// created the first time and then kept, empty when there is no fault, until
// the host goes: removing a base chain unregisters its hook, and when any
// hook of a namespace goes the kernel drops every packet that any netfilter
// queue of the namespace holds, which would be every packet the delay lines
// of the host's links are delaying.
func (e *End) setChainRules(ch *nftables.Chain, add func(*nftables.Conn)) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(e.Host.ns)))
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	existing, err := c.ListTablesOfFamily(ch.Table.Family)
	if err != nil {
		return fmt.Errorf("list tables: %w", err)
	}
	if slices.ContainsFunc(existing, func(t *nftables.Table) bool { return t.Name == ch.Table.Name }) {
		c.FlushChain(ch)
	} else {
		c.AddTable(ch.Table)
		c.AddChain(ch)
	}
	add(c)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply table %s: %w", ch.Table.Name, err)
	}
	return nil
}

func addFaultRules(c *nftables.Conn, chain *nftables.Chain, f faultSet) {
	table := chain.Table
	add := func(exprs ...expr.Any) { c.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: exprs}) }
	drop := &expr.Verdict{Kind: expr.VerdictDrop}

	ports := slices.Sorted(maps.Keys(f.resets))
	for _, port := range ports {
		for _, off := range []uint32{0, 2} { // source port, destination port
			add(
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
				// Let RSTs through: the other end's rule must not swallow the
				// reset this end generated.
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{tcpFlagRST}, Xor: []byte{0}},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}},
				&expr.Reject{Type: unix.NFT_REJECT_TCP_RST},
			)
		}
	}
	if f.blackhole {
		add(drop)
	}
	if f.lossPct > 0 {
		add(
			&expr.Numgen{Register: 1, Modulus: 100, Type: unix.NFT_NG_RANDOM},
			&expr.Cmp{Op: expr.CmpOpLt, Register: 1, Data: binaryutil.NativeEndian.PutUint32(uint32(f.lossPct))},
			drop,
		)
	}
}

// Down sets both veth ends administratively down: no carrier, packets are
// dropped at once, and the kernel flushes routes through the link.
func (l *LinkPair) Down() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.setDown(true); err != nil {
		return l.fail(err)
	}
	return nil
}

// Up undoes Down: both ends up, and the routes that AddRoute installed on
// either host are put back. It counts as a heal (see OnHeal).
func (l *LinkPair) Up() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.markHealLocked()
	if err := l.setDown(false); err != nil {
		return l.fail(err)
	}
	return nil
}

func (l *LinkPair) setDown(down bool) error {
	for _, e := range []*End{l.A, l.B} {
		if err := e.setUp(!down); err != nil {
			return err
		}
	}
	if !down {
		if err := l.waitOperUp(); err != nil {
			return err
		}
		l.A.Host.reapplyRoutes()
		l.B.Host.reapplyRoutes()
	}
	l.down = down
	return nil
}

// Flap takes the link down for period, then up for period, repeatedly until
// duration has passed; it returns with the link up. It blocks for duration.
func (l *LinkPair) Flap(period, duration time.Duration) error {
	if period <= 0 || duration <= 0 {
		return l.fail(fmt.Errorf("flap %v/%v: want positive durations", period, duration))
	}
	l.t.Logf("testenv: %s: flapping %v down / %v up for %v", l, period, period, duration)
	end := time.Now().Add(duration)
	for cycles := int(duration/(2*period)) + 1; cycles > 0 && time.Now().Before(end); cycles-- {
		if err := l.Down(); err != nil {
			return err
		}
		time.Sleep(min(period, time.Until(end)))
		if err := l.Up(); err != nil {
			return err
		}
		time.Sleep(min(period, max(time.Until(end), 0)))
	}
	return nil
}

// RateLimit shapes the link to bitsPerSec in each direction with a tbf
// qdisc on both ends; 0 removes the limit. It composes with Delay.
func (l *LinkPair) RateLimit(bitsPerSec uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range []*End{l.A, l.B} {
		if err := e.setRate(bitsPerSec); err != nil {
			return l.fail(err)
		}
	}
	l.rate = bitsPerSec
	l.t.Logf("testenv: %s: rate limit %d bit/s", l, bitsPerSec)
	return nil
}

func (e *End) setRate(bitsPerSec uint64) error {
	link, err := e.netlink()
	if err != nil {
		return err
	}
	attrs := netlink.QdiscAttrs{
		LinkIndex: link.Attrs().Index,
		Handle:    netlink.MakeHandle(1, 0),
		Parent:    netlink.HANDLE_ROOT,
	}
	if bitsPerSec == 0 {
		err := e.Host.nl.QdiscDel(&netlink.Tbf{QdiscAttrs: attrs})
		if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("%s: remove tbf: %w", e, err)
		}
		return nil
	}
	rate := bitsPerSec / 8
	// The bucket must hold a whole GSO super-packet (64 KiB) or tbf has to
	// segment every one; beyond that, 10 ms worth of rate keeps the shaping
	// smooth. The queue holds 50 ms, like a modest router buffer.
	burst := max(uint32(rate/100), 64<<10)
	limit := max(uint32(rate/20), 2*burst)
	q := &netlink.Tbf{
		QdiscAttrs: attrs,
		Rate:       rate,
		Limit:      limit,
		Buffer:     netlink.Xmittime(rate, burst),
	}
	if err := e.Host.nl.QdiscReplace(q); err != nil {
		return fmt.Errorf("%s: tbf %d bit/s: %w", e, bitsPerSec, err)
	}
	return nil
}

// Heal undoes every fault on the link (blackhole, resets, loss, rate limit,
// delay, down) and records the moment the link carries packets again, which
// OnHeal callbacks receive and HealedAt returns.
func (l *LinkPair) Heal() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.markHealLocked()
	var errs []error
	if err := l.applyFaults(faultSet{}); err != nil {
		errs = append(errs, err)
	} else {
		l.faults = faultSet{}
	}
	if l.rate != 0 {
		for _, e := range []*End{l.A, l.B} {
			if err := e.setRate(0); err != nil {
				errs = append(errs, err)
			}
		}
		l.rate = 0
	}
	if l.down {
		if err := l.setDown(false); err != nil {
			errs = append(errs, err)
		}
	}
	for _, e := range []*End{l.A, l.B} {
		if err := e.removeDelayLocked(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return l.fail(fmt.Errorf("%s: heal: %w", l, err))
	}
	l.t.Logf("testenv: %s: healed", l)
	return nil
}

// markHealLocked takes the heal time and tells the OnHeal callbacks, just
// before the kernel state changes: so whoever measures recovery knows of the
// heal before the first byte can pass, at the price of a heal time that is
// early by the callbacks' run time (microseconds).
func (l *LinkPair) markHealLocked() {
	l.lastHeal = time.Now()
	for _, fn := range l.onHeal {
		fn(l.lastHeal)
	}
}

// OnHeal registers fn to be called with the heal time on every Heal and Up
// (so on every flap cycle too); for example a traffic run's MarkHeal, or
// HealFile. fn runs just before the link carries packets again, with the
// link locked: it must be quick and must not call the link's methods.
func (l *LinkPair) OnHeal(fn func(time.Time)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.onHeal = append(l.onHeal, fn)
}

// HealedAt is the time of the last Heal or Up; zero if none yet.
func (l *LinkPair) HealedAt() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastHeal
}

// HealFile appends every heal time of the link to the file at path, one
// Unix-nanosecond timestamp per line: the heal-file format of
// tools/uslload's --heal-file, for measuring recovery in another process.
func (l *LinkPair) HealFile(path string) {
	l.OnHeal(func(at time.Time) {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			l.t.Errorf("testenv: heal file: %v", err)
			return
		}
		defer f.Close()
		if _, err := fmt.Fprintf(f, "%d\n", at.UnixNano()); err != nil {
			l.t.Errorf("testenv: heal file %s: %v", path, err)
		}
	})
}
