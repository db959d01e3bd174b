package hub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/gateway"
	"github.com/usltun/usltun/internal/bufpool"
	"github.com/usltun/usltun/usl"
)

// Config is what every peer's session and gateway share.
type Config struct {
	// Session is the template of each peer's session: this host's key,
	// timers, scheduler, logger. PeerKeys, MaxStreams and ReplayBuffer
	// are set per peer.
	Session usl.Config
	// Gateway is the template of each peer's gateway; Exports, ExportDNS,
	// MaxFlows, MaxDials, MaxOpens, Forward and OnFlow are set per peer (OnFlow
	// wraps the template's).
	Gateway gateway.Config
	// Relay lets a flow from one peer to another peer's route be spliced
	// between their sessions. A single-peer daemon routes everything to
	// its one peer and has nothing to relay.
	Relay  bool
	Logger *slog.Logger
}

// Hub is the running peer table. Its methods are safe for concurrent use.
type Hub struct {
	cfg   Config
	log   *slog.Logger
	ctx   context.Context
	table atomic.Pointer[Table]

	mu   sync.Mutex // serialises Reload, New and Close; guards live
	live map[usl.PublicKey]*Live
	// liveSnap is a copy of live, replaced whole under mu, for the lookups
	// of every flow (route) without the lock.
	liveSnap atomic.Pointer[map[usl.PublicKey]*Live]
	wg       sync.WaitGroup
	bufs     bufpool.Pool // relay buffers, borrowed only while data moves
}

// Live is a peer's running state: its session slot, its gateway, its
// open flows.
type Live struct {
	h      *Hub
	peer   atomic.Pointer[Peer]
	slot   *Slot
	gw     *gateway.Gateway
	ctx    context.Context
	cancel context.CancelFunc
	dialed *usl.Session // the session this side dials (Endpoints), or nil

	out atomic.Int64 // flows this host sends to the peer (MaxFlows)

	mu      sync.Mutex
	streams map[*usl.Stream]struct{} // every open stream of the peer's flows, to reset on removal
	removed bool
}

// New starts a hub serving t: peers with endpoints are dialed at once;
// the others wait for Adopt. ctx ends every peer.
func New(ctx context.Context, cfg Config, t *Table) (*Hub, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	h := &Hub{cfg: cfg, log: cfg.Logger, ctx: ctx, live: make(map[usl.PublicKey]*Live)}
	h.table.Store(t)
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range t.Peers() {
		if _, err := h.startLocked(p); err != nil {
			for _, l := range h.live {
				l.stop("start failed")
			}
			return nil, err
		}
	}
	h.publishLocked()
	return h, nil
}

// publishLocked makes the lock-free snapshot of live current.
func (h *Hub) publishLocked() {
	m := make(map[usl.PublicKey]*Live, len(h.live))
	for k, l := range h.live {
		m[k] = l
	}
	h.liveSnap.Store(&m)
}

// lookup is the live state of key k, or nil, without the lock. In the
// moment of a Reload between the new table and the new snapshot a key
// missing from the snapshot is looked up under the lock.
func (h *Hub) lookup(k usl.PublicKey) *Live {
	if m := h.liveSnap.Load(); m != nil {
		if l := (*m)[k]; l != nil {
			return l
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.live[k]
}

// Table is the current peer table.
func (h *Hub) Table() *Table { return h.table.Load() }

// Allow is the listener's allowlist (usl.Config.Allow): the current table's
// keys.
func (h *Hub) Allow(k usl.PublicKey) bool { return h.table.Load().Peer(k) != nil }

// PeerLimits is the listener's per-key session budget
// (usl.Config.PeerLimits).
func (h *Hub) PeerLimits(k usl.PublicKey) (maxStreams, replayBuffer int) {
	if p := h.table.Load().Peer(k); p != nil {
		return p.Limits.MaxStreams, p.Limits.ReplayBuffer
	}
	return 1, 0
}

func (h *Hub) sessionConfig(p *Peer) usl.Config {
	c := h.cfg.Session
	c.PeerKeys = []usl.PublicKey{p.Key}
	c.Allow, c.PeerLimits = nil, nil
	c.MaxStreams, c.ReplayBuffer = p.Limits.MaxStreams, p.Limits.ReplayBuffer
	c.Logger = h.cfg.Session.Logger.With("peer", p.Name)
	return c
}

// startLocked creates p's live state and dials it if it has endpoints.
func (h *Hub) startLocked(p *Peer) (*Live, error) {
	ctx, cancel := context.WithCancel(h.ctx)
	l := &Live{h: h, slot: NewSlot(), ctx: ctx, cancel: cancel, streams: make(map[*usl.Stream]struct{})}
	l.peer.Store(p)
	gc := h.cfg.Gateway
	gc.Exports, gc.ExportDNS = p.Exports, p.ExportDNS
	gc.MaxFlows, gc.MaxDials, gc.MaxOpens = p.Limits.MaxFlows, p.Limits.MaxDials, p.Limits.MaxOpens
	gc.Logger = h.log.With("component", "gateway", "name", p.Name)
	base := gc.OnFlow
	gc.OnFlow = func(st *usl.Stream, dst flow.Dest) func() {
		l.track(st)
		var ended func()
		if base != nil {
			ended = base(st, dst)
		}
		return func() {
			l.untrack(st)
			if ended != nil {
				ended()
			}
		}
	}
	if h.cfg.Relay {
		gc.Forward = l.forward
	}
	l.gw = gateway.New(gc)
	if len(p.Endpoints) > 0 {
		c := h.sessionConfig(p)
		s, err := usl.DialPaths(ctx, p.Endpoints, c)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("peer %s: %w", p.Name, err)
		}
		l.dialed = s
		eps := make([]string, len(p.Endpoints))
		for i, ep := range p.Endpoints {
			eps[i] = ep.String()
		}
		sched := usl.Scheduler(usl.Failover{}) // usl's default
		if c.Scheduler != nil {
			sched = c.Scheduler
		}
		h.log.Info("dialing peer", "peer", p.Name, "addr", strings.Join(eps, ", "), "scheduler", sched.Name(), "peer_key", p.Key.String())
		l.serve(s)
	}
	h.live[p.Key] = l
	return l, nil
}

// Adopt serves an accepted session as its peer's: new flows to the peer
// use it. A session whose key is no longer in the table (removed by a
// reload while it handshook) is closed.
func (h *Hub) Adopt(s *usl.Session) {
	// Under the lock: a Reload that admitted this key has finished
	// creating its live state.
	h.mu.Lock()
	l := h.live[s.PeerKey()]
	h.mu.Unlock()
	if l == nil {
		h.log.Info("session of a removed peer closed", "peer_key", s.PeerKey().String())
		go s.Close()
		return
	}
	h.log.Info("peer connected", "peer", l.Peer().Name, "peer_key", s.PeerKey().String())
	l.serve(s)
}

func (l *Live) serve(s *usl.Session) {
	l.slot.Set(s)
	l.h.wg.Add(1)
	go func() {
		defer l.h.wg.Done()
		if err := l.gw.Serve(l.ctx, s); err != nil {
			l.h.log.Info("session ended", "peer", l.Peer().Name, "err", err)
		}
	}()
}

// Peer is the live peer's current configuration.
func (l *Live) Peer() *Peer { return l.peer.Load() }

// Session is the peer's current session, or nil before it first connects.
func (l *Live) Session() *usl.Session { return l.slot.Current() }

// Flows is the number of the peer's open flows, both directions.
func (l *Live) Flows() int { return int(l.out.Load()) + l.gw.Flows() }

func (l *Live) track(st *usl.Stream) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.removed {
		return false
	}
	l.streams[st] = struct{}{}
	return true
}

func (l *Live) untrack(st *usl.Stream) {
	l.mu.Lock()
	delete(l.streams, st)
	l.mu.Unlock()
}

// Peers are the live peers, sorted as `wg show` sorts: the most recent
// handshake first, peers that never connected last (by name).
func (h *Hub) Peers() []*Live {
	h.mu.Lock()
	out := make([]*Live, 0, len(h.live))
	for _, l := range h.live {
		out = append(out, l)
	}
	h.mu.Unlock()
	last := make(map[*Live]time.Time, len(out))
	for _, l := range out {
		if s := l.Session(); s != nil {
			last[l] = s.Stats().LastHandshake
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := last[out[i]], last[out[j]]
		if !a.Equal(b) {
			return a.After(b)
		}
		return out[i].Peer().Name < out[j].Peer().Name
	})
	return out
}

// Get returns the live peer called name, or with that public key.
func (h *Hub) Get(nameOrKey string) *Live {
	t := h.table.Load()
	p := t.ByName(nameOrKey)
	if p == nil {
		if k, err := usl.ParsePublicKey(nameOrKey); err == nil {
			p = t.Peer(k)
		}
	}
	if p == nil {
		return nil
	}
	return h.lookup(p.Key)
}

// errNoRoute is why a flow to an address no peer routes is unreachable.
var errNoRoute = errors.New("no peer routes this destination")

// route picks the peer of dst: the longest-prefix match of its address,
// or for a named destination the peer of the default route.
func (h *Hub) route(dst flow.Dest) *Live {
	a := dst.Addr.Addr()
	if dst.Name != "" || !a.IsValid() {
		a = netip.IPv4Unspecified()
	}
	p, ok := h.table.Load().Lookup(a)
	if !ok {
		return nil
	}
	return h.lookup(p.Key)
}

// OpenStream opens the far half of a front end's flow to dst on the
// session of the peer that routes it, waiting while that peer is not
// connected (bounded by ctx). A destination no peer routes fails with
// flow.ErrUnreachable, a peer at its MaxFlows with flow.ErrLimit. ended
// must be called once when the flow is over.
func (h *Hub) OpenStream(ctx context.Context, dst flow.Dest) (st *usl.Stream, ended func(), err error) {
	l := h.route(dst)
	if l == nil {
		return nil, nil, &flow.Error{Reason: flow.Unreachable, Err: fmt.Errorf("%s: %w", dst, errNoRoute)}
	}
	return l.open(ctx, dst)
}

func (l *Live) open(ctx context.Context, dst flow.Dest) (*usl.Stream, func(), error) {
	p := l.Peer()
	if max := p.Limits.MaxFlows; l.out.Add(1) > int64(max) && max > 0 {
		l.out.Add(-1)
		return nil, nil, &flow.Error{Reason: flow.Limit, Err: fmt.Errorf("peer %s has %d flows open (max_flows)", p.Name, max)}
	}
	release := func() { l.out.Add(-1) }
	s, err := l.slot.Wait(ctx, l.ctx)
	if err != nil {
		release()
		if l.ctx.Err() != nil && ctx.Err() == nil {
			return nil, nil, &flow.Error{Reason: flow.Aborted, Err: fmt.Errorf("peer %s was removed", p.Name)}
		}
		return nil, nil, err
	}
	st, err := s.OpenStream(ctx, dst.Marshal())
	if err != nil {
		release()
		return nil, nil, err
	}
	if !l.track(st) {
		st.Reset(usl.ResetAborted)
		release()
		return nil, nil, &flow.Error{Reason: flow.Aborted, Err: fmt.Errorf("peer %s was removed", p.Name)}
	}
	var once sync.Once
	return st, func() {
		once.Do(func() {
			l.untrack(st)
			release()
		})
	}, nil
}

// stop resets every open flow of the peer, closes its sessions and ends
// its gateway's loop. Resetting first makes the applications on both ends
// see an RST at once rather than a FIN after the close's drain.
func (l *Live) stop(why string) {
	l.mu.Lock()
	l.removed = true
	streams := make([]*usl.Stream, 0, len(l.streams))
	for st := range l.streams {
		streams = append(streams, st)
	}
	clear(l.streams)
	l.mu.Unlock()
	for _, st := range streams {
		st.Reset(usl.ResetAborted)
	}
	p := l.Peer()
	l.h.log.Info("peer removed: flows reset, session closed", "peer", p.Name, "peer_key", p.Key.String(), "flows_reset", len(streams), "why", why)
	l.cancel()
	s := l.slot.Current()
	l.h.wg.Add(1)
	go func() {
		defer l.h.wg.Done()
		if s != nil {
			closeBounded(s)
		}
		if l.dialed != nil && l.dialed != s {
			closeBounded(l.dialed)
		}
	}()
}

// closeBounded closes a session, giving its reliable close a bound.
func closeBounded(s *usl.Session) {
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// Change summarises what a Reload did.
type Change struct {
	Added   []string `json:"added"` // peer names
	Removed []string `json:"removed"`
	Changed []string `json:"changed"`
}

// Reload makes t the table. Peers whose key is new are started; peers
// whose key is gone are stopped; peers whose endpoints changed are
// restarted (their session is the dialed one); the others keep their
// session and flows, and their new routes, exports and limits apply to
// new flows. t was checked whole by NewTable: there is no partial reload.
func (h *Hub) Reload(t *Table) (Change, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var c Change
	old := h.table.Load()
	// Swap first: from here new handshakes and flows see the new table,
	// so a removed key cannot sneak a new session in after its stop.
	h.table.Store(t)
	for _, op := range old.Peers() {
		np := t.Peer(op.Key)
		l := h.live[op.Key]
		if l == nil {
			continue
		}
		switch {
		case np == nil:
			delete(h.live, op.Key)
			l.stop("removed from the configuration")
			c.Removed = append(c.Removed, op.Name)
		case !slices.Equal(np.Endpoints, op.Endpoints):
			delete(h.live, op.Key)
			l.stop("its endpoints changed")
			if _, err := h.startLocked(np); err != nil {
				h.log.Warn("peer not restarted", "peer", np.Name, "err", err)
			}
			c.Changed = append(c.Changed, np.Name)
		default:
			l.peer.Store(np)
			l.gw.SetExports(np.Exports)
			if !samePeer(op, np) {
				c.Changed = append(c.Changed, np.Name)
			}
		}
	}
	for _, np := range t.Peers() {
		if old.Peer(np.Key) != nil {
			continue
		}
		if _, err := h.startLocked(np); err != nil {
			h.log.Warn("peer not started", "peer", np.Name, "err", err)
			continue
		}
		c.Added = append(c.Added, np.Name)
	}
	h.publishLocked()
	return c, nil
}

func samePeer(a, b *Peer) bool {
	return a.Name == b.Name && slices.Equal(a.Routes, b.Routes) && slices.Equal(a.Exports, b.Exports) &&
		a.ExportDNS == b.ExportDNS && a.Limits == b.Limits
}

// Close stops every peer (resetting nothing: the daemon closes its front
// ends first, so their flows have ended with FINs) and waits.
func (h *Hub) Close() {
	h.mu.Lock()
	var ss []*usl.Session
	var cancels []context.CancelFunc
	for _, l := range h.live {
		cancels = append(cancels, l.cancel)
		if s := l.slot.Current(); s != nil {
			ss = append(ss, s)
		}
		if l.dialed != nil && l.dialed != l.slot.Current() {
			ss = append(ss, l.dialed)
		}
	}
	h.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range ss {
		wg.Add(1)
		go func() { defer wg.Done(); closeBounded(s) }()
	}
	wg.Wait()
	// The sessions' reliable close first, then the gateways' loops.
	for _, cancel := range cancels {
		cancel()
	}
	h.wg.Wait()
	h.mu.Lock()
	gws := make([]*gateway.Gateway, 0, len(h.live))
	for _, l := range h.live {
		gws = append(gws, l.gw)
	}
	h.mu.Unlock()
	for _, g := range gws {
		g.Wait()
	}
}
