package hub

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/gateway"
	"github.com/usltun/usltun/usl"
)

// lab is a hub on loopback with peers that are usl sessions of this
// process (the library, not daemons).
type lab struct {
	t    *testing.T
	hub  *Hub
	ln   *usl.Listener
	key  usl.PrivateKey
	ctx  context.Context
	echo netip.AddrPort // a TCP echo server on 127.0.0.1
}

func fastSession(k usl.PrivateKey, peers ...usl.PublicKey) usl.Config {
	log := slog.New(slog.DiscardHandler)
	if os.Getenv("USL_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return usl.Config{PrivateKey: k, PeerKeys: peers, KeepaliveInterval: 50 * time.Millisecond,
		DeadInterval: 300 * time.Millisecond, ReconnectMin: 5 * time.Millisecond, ReconnectMax: 100 * time.Millisecond,
		HandshakeRate: 1000, Logger: log}
}

func newLab(t *testing.T, peers ...*Peer) *lab {
	t.Helper()
	key, _ := usl.GeneratePrivateKey()
	ctx, cancel := context.WithCancel(context.Background())
	l := &lab{t: t, key: key, ctx: ctx}
	tb, err := NewTable(peers)
	if err != nil {
		t.Fatal(err)
	}
	cfg := fastSession(key)
	l.hub, err = New(ctx, Config{Session: cfg, Gateway: gateway.Config{DialTimeout: 2 * time.Second}, Relay: true, Logger: cfg.Logger}, tb)
	if err != nil {
		t.Fatal(err)
	}
	lcfg := cfg
	lcfg.Allow, lcfg.PeerLimits = l.hub.Allow, l.hub.PeerLimits
	if l.ln, err = usl.Listen("tcp", "127.0.0.1:0", lcfg); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			s, err := l.ln.Accept(ctx)
			if err != nil {
				return
			}
			l.hub.Adopt(s)
		}
	}()
	el, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.echo = el.Addr().(*net.TCPAddr).AddrPort()
	go func() {
		for {
			c, err := el.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	t.Cleanup(func() {
		el.Close()
		l.ln.Close()
		cancel()
		l.hub.Close()
	})
	return l
}

// dial connects a peer with key k to the hub and waits until it is up.
func (l *lab) dial(k usl.PrivateKey) *usl.Session {
	l.t.Helper()
	cfg := fastSession(k, l.key.Public())
	cfg.SessionTimeout = time.Second
	s, err := usl.Dial(l.ctx, l.ln.Addr().String(), cfg)
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { s.Close() })
	for i := 0; s.Stats().State != usl.Up; i++ {
		if i == 300 {
			l.t.Fatalf("peer %s not up after 3 s: %v", k.Public(), s.Stats().State)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s
}

func tcpDest(ap string) flow.Dest {
	return flow.Dest{Proto: flow.TCP, Addr: netip.MustParseAddrPort(ap)}
}

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func resetCode(err error) usl.ResetCode {
	var re *usl.ResetError
	if errors.As(err, &re) {
		return re.Code
	}
	return 0
}

// roundTrip writes msg and reads it back.
func roundTrip(t *testing.T, c io.ReadWriter, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	b := make([]byte, len(msg))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != msg {
		t.Fatalf("read back %q, %v; want %q", b, err, msg)
	}
}

// serveEcho accepts one stream on s, checks its destination and echoes.
func serveEcho(t *testing.T, s *usl.Session, want string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := s.AcceptStream(ctx)
	if err != nil {
		t.Errorf("accept: %v", err)
		return
	}
	d, err := flow.Parse(st.Descriptor())
	if err != nil || d.String() != want {
		t.Errorf("stream to %v (%v), want %s", d, err, want)
		st.Reject(usl.ResetRefused)
		return
	}
	st.Accept()
	go func() { io.Copy(st, st); st.Close() }()
}

// The peer table at work: exports per peer, routes by longest prefix,
// relay between peers, and a reload that removes one peer and narrows
// another without touching what it leaves alone.
func TestHubRoutesExportsRelayReload(t *testing.T) {
	ka, _ := usl.GeneratePrivateKey()
	kb, _ := usl.GeneratePrivateKey()
	lim := Limits{}.WithDefaults(Limits{})
	anna := &Peer{Name: "anna", Key: ka.Public(), Routes: pfx("10.30.1.0/24"), Exports: pfx("127.0.0.1/32", "10.30.2.0/24"), Limits: lim}
	bert := &Peer{Name: "bert", Key: kb.Public(), Routes: pfx("10.30.2.0/24"), Limits: lim}
	l := newLab(t, anna, bert)
	sa, sb := l.dial(ka), l.dial(kb)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	echo := flow.Dest{Proto: flow.TCP, Addr: l.echo}

	// Exports: anna reaches the echo server, bert is forbidden it.
	stA, err := sa.OpenStream(ctx, echo.Marshal())
	if err != nil {
		t.Fatalf("anna to an exported address: %v", err)
	}
	roundTrip(t, stA, "anna's own flow")
	if _, err := sb.OpenStream(ctx, echo.Marshal()); resetCode(err) != usl.ResetForbidden {
		t.Fatalf("bert to an address it is not exported: %v, want forbidden", err)
	}

	// Routes: the hub's own flows go to the peer whose route holds them;
	// one nobody routes is unreachable.
	go serveEcho(t, sb, "tcp/10.30.2.5:80")
	st, ended, err := l.hub.OpenStream(ctx, tcpDest("10.30.2.5:80"))
	if err != nil {
		t.Fatalf("hub to bert's route: %v", err)
	}
	roundTrip(t, st, "to bert")
	st.Close()
	ended()
	if _, _, err := l.hub.OpenStream(ctx, tcpDest("10.30.9.9:80")); !errors.Is(err, flow.ErrUnreachable) {
		t.Fatalf("hub to an unrouted address: %v, want unreachable", err)
	}

	// Relay: anna's flow into bert's route is spliced to bert's session.
	go serveEcho(t, sb, "tcp/10.30.2.7:22")
	relayed, err := sa.OpenStream(ctx, tcpDest("10.30.2.7:22").Marshal())
	if err != nil {
		t.Fatalf("anna to bert's route: %v", err)
	}
	roundTrip(t, relayed, "anna via the hub to bert")
	// bert exports nothing: its flow into anna's route is forbidden
	// before any relay.
	if _, err := sb.OpenStream(ctx, tcpDest("10.30.1.1:22").Marshal()); resetCode(err) != usl.ResetForbidden {
		t.Fatalf("bert to anna's route, not exported to it: %v, want forbidden", err)
	}

	// Reload: bert removed, anna narrowed to bert's old route only.
	anna2 := *anna
	anna2.Exports = pfx("10.30.2.0/24")
	t2, err := NewTable([]*Peer{&anna2})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := l.hub.Reload(t2)
	if err != nil || len(ch.Removed) != 1 || ch.Removed[0] != "bert" || len(ch.Changed) != 1 {
		t.Fatalf("reload: %+v, %v", ch, err)
	}
	// The relayed flow went with bert, reset.
	relayed.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := relayed.Read(make([]byte, 1)); resetCode(err) != usl.ResetAborted {
		t.Fatalf("relayed flow after bert's removal: %v, want reset (aborted)", err)
	}
	// anna's own flow was not touched, though its export is gone now.
	roundTrip(t, stA, "still here")
	if _, err := sa.OpenStream(ctx, echo.Marshal()); resetCode(err) != usl.ResetForbidden {
		t.Fatalf("anna's new flow after narrowing: %v, want forbidden", err)
	}
	if l.hub.Allow(kb.Public()) {
		t.Fatal("bert's key still allowed")
	}
	if got := l.hub.Get("bert"); got != nil {
		t.Fatal("bert still live")
	}
	if p := l.hub.Get("anna"); p == nil || p.Session() == nil {
		t.Fatal("anna lost")
	}
}

// A peer at its flow limit gets the limit reason; the others do not.
func TestHubPerPeerFlowLimit(t *testing.T) {
	ka, _ := usl.GeneratePrivateKey()
	kb, _ := usl.GeneratePrivateKey()
	anna := &Peer{Name: "anna", Key: ka.Public(), Exports: pfx("127.0.0.1/32"), Limits: Limits{MaxFlows: 2}.WithDefaults(Limits{})}
	bert := &Peer{Name: "bert", Key: kb.Public(), Exports: pfx("127.0.0.1/32"), Limits: Limits{}.WithDefaults(Limits{})}
	l := newLab(t, anna, bert)
	sa, sb := l.dial(ka), l.dial(kb)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	echo := flow.Dest{Proto: flow.TCP, Addr: l.echo}.Marshal()
	for i := 0; i < 2; i++ {
		st, err := sa.OpenStream(ctx, echo)
		if err != nil {
			t.Fatalf("anna's flow %d: %v", i, err)
		}
		roundTrip(t, st, "x")
	}
	if _, err := sa.OpenStream(ctx, echo); resetCode(err) != usl.ResetLimit {
		t.Fatalf("anna's third flow with max_flows 2: %v, want limit", err)
	}
	for i := 0; i < 3; i++ {
		st, err := sb.OpenStream(ctx, echo)
		if err != nil {
			t.Fatalf("bert's flow %d, beside anna at her limit: %v", i, err)
		}
		roundTrip(t, st, "y")
	}
	if n := l.hub.Get("anna").Flows(); n != 2 {
		t.Errorf("anna's flows = %d, want 2", n)
	}
}

// A peer opening flows faster than its max_opens gets the limit reason
// for the excess, before the hub dials them; another peer opening at the
// same time is not refused.
func TestHubPerPeerOpenRate(t *testing.T) {
	ka, _ := usl.GeneratePrivateKey()
	kb, _ := usl.GeneratePrivateKey()
	anna := &Peer{Name: "anna", Key: ka.Public(), Exports: pfx("127.0.0.1/32"), Limits: Limits{MaxOpens: 5}.WithDefaults(Limits{})}
	bert := &Peer{Name: "bert", Key: kb.Public(), Exports: pfx("127.0.0.1/32"), Limits: Limits{}.WithDefaults(Limits{})}
	l := newLab(t, anna, bert)
	sa, sb := l.dial(ka), l.dial(kb)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	echo := flow.Dest{Proto: flow.TCP, Addr: l.echo}.Marshal()
	// 20 opens at once: the burst of 5 (and what the bucket refills
	// meanwhile, at 5 a second) goes through, the rest is refused.
	var ok, limited int
	for i := 0; i < 20; i++ {
		st, err := sa.OpenStream(ctx, echo)
		switch {
		case err == nil:
			ok++
			roundTrip(t, st, "x")
			st.Close()
		case resetCode(err) == usl.ResetLimit:
			limited++
		default:
			t.Fatalf("anna's flow %d: %v, want accepted or limit", i, err)
		}
		st, err = sb.OpenStream(ctx, echo)
		if err != nil {
			t.Fatalf("bert's flow %d, beside anna past her max_opens: %v", i, err)
		}
		roundTrip(t, st, "y")
		st.Close()
	}
	if ok < 5 || ok > 10 || limited != 20-ok {
		t.Errorf("anna with max_opens 5: %d accepted, %d refused of 20 at once, want 5 to 10 accepted, the rest refused", ok, limited)
	}
}

// Peers lists the most recent handshake first and peers that never
// connected last, as wg show sorts.
func TestHubPeersIdleLast(t *testing.T) {
	var keys []usl.PrivateKey
	var peers []*Peer
	for _, name := range []string{"a-idle", "b-first", "c-second"} {
		k, _ := usl.GeneratePrivateKey()
		keys = append(keys, k)
		peers = append(peers, &Peer{Name: name, Key: k.Public(), Limits: Limits{}.WithDefaults(Limits{})})
	}
	l := newLab(t, peers...)
	l.dial(keys[1])
	time.Sleep(20 * time.Millisecond)
	l.dial(keys[2])
	for i := 0; ; i++ {
		if s := l.hub.Get("c-second").Session(); s != nil && !s.Stats().LastHandshake.IsZero() {
			break
		}
		if i == 200 {
			t.Fatal("c-second never adopted")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var got []string
	for _, p := range l.hub.Peers() {
		got = append(got, p.Peer().Name)
	}
	if want := []string{"c-second", "b-first", "a-idle"}; !slices.Equal(got, want) {
		t.Fatalf("Peers() = %v, want %v", got, want)
	}
}

// A flow towards a peer that has not connected waits for it, as any USL
// flow waits across a partition, and goes through once it is there.
func TestHubFlowWaitsForItsPeer(t *testing.T) {
	kb, _ := usl.GeneratePrivateKey()
	bert := &Peer{Name: "bert", Key: kb.Public(), Routes: pfx("10.30.2.0/24"), Limits: Limits{}.WithDefaults(Limits{})}
	l := newLab(t, bert)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type opened struct {
		st  *usl.Stream
		err error
	}
	done := make(chan opened, 1)
	go func() {
		st, _, err := l.hub.OpenStream(ctx, tcpDest("10.30.2.5:80"))
		done <- opened{st, err}
	}()
	select {
	case o := <-done:
		t.Fatalf("flow to a peer not connected returned at once: %v", o.err)
	case <-time.After(300 * time.Millisecond):
	}
	sb := l.dial(kb)
	go serveEcho(t, sb, "tcp/10.30.2.5:80")
	o := <-done
	if o.err != nil {
		t.Fatalf("flow after the peer connected: %v", o.err)
	}
	roundTrip(t, o.st, "waited")
}
