package gateway

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/testenv"
	"github.com/usltun/usltun/usl"
	"golang.org/x/net/dns/dnsmessage"
)

func prefixes(ss ...string) []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range ss {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	return ps
}

func TestPolicy(t *testing.T) {
	own := netip.MustParseAddr("10.98.0.1")
	cases := []struct {
		exports []string
		dst     string
		want    bool
	}{
		{[]string{"0.0.0.0/0"}, "10.98.0.2", true},
		{[]string{"0.0.0.0/0"}, "127.0.0.1", false},
		{[]string{"0.0.0.0/0"}, "10.98.0.1", false}, // the gateway's own address
		{[]string{"0.0.0.0/0"}, "169.254.1.1", false},
		{[]string{"0.0.0.0/0"}, "224.0.0.251", false},
		{[]string{"0.0.0.0/0"}, "255.255.255.255", false},
		{[]string{"0.0.0.0/0"}, "0.0.0.0", false},
		{[]string{"0.0.0.0/1"}, "127.0.0.1", false},
		{[]string{"0.0.0.0/0", "127.0.0.1/32"}, "127.0.0.1", true},
		{[]string{"0.0.0.0/0", "127.0.0.1/32"}, "127.0.0.2", false},
		{[]string{"127.0.0.0/8"}, "127.0.0.2", true},
		{[]string{"10.98.0.0/24"}, "10.98.0.2", true},
		{[]string{"10.98.0.0/24"}, "10.98.0.1", false},
		{[]string{"10.98.0.1/32"}, "10.98.0.1", true},
		{[]string{"169.254.0.0/16"}, "169.254.1.1", true},
		{[]string{"::/0"}, "::1", false},
		{[]string{"::/0"}, "fe80::1", false},
		{[]string{"::/0"}, "ff02::1", false},
		{[]string{"::/0"}, "::", false},
		{[]string{"::/0"}, "fd98::2", true},
		{[]string{"::1/128"}, "::1", true},
		{[]string{"::/0"}, "::ffff:127.0.0.1", false}, // mapped: checked as IPv4, and ::/0 holds no IPv4
		{[]string{"127.0.0.1/32"}, "::ffff:127.0.0.1", true},
		{nil, "10.98.0.2", false},
	}
	for _, c := range cases {
		dst := netip.MustParseAddr(c.dst)
		if got := allowed(prefixes(c.exports...), dst, dst.Unmap() == own); got != c.want {
			t.Errorf("exports %v, dst %s: allowed = %v, want %v", c.exports, c.dst, got, c.want)
		}
	}
}

func TestLocalAddrsFailClosed(t *testing.T) {
	l := localAddrs{list: func() ([]netip.Addr, error) { return nil, errors.New("no netlink") }}
	if !l.has(netip.MustParseAddr("10.1.2.3")) {
		t.Error("an unreadable address list must count every address as local")
	}
}

// TestNamedDestinations resolves names with a resolver of the test's own:
// the export check applies to the resolved addresses, the allowed ones are
// dialed, and lookup failures map to flow outcomes.
func TestNamedDestinations(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dns := testenv.ServeDNS(pc, map[string][]netip.Addr{
		// The forbidden address first: the gateway must skip it.
		"mixed.test":   {netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.1")},
		"outside.test": {netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("::1")},
	})
	defer dns.Close()
	res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", dns.Addr().String())
	}}
	s := sessionPairWith(t, Config{
		Exports:     prefixes("127.0.0.1/32"),
		Resolver:    res,
		DialTimeout: 2 * time.Second,
		LocalAddrs:  func() ([]netip.Addr, error) { return nil, nil },
	})
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	openNamed := func(name string) (*usl.Stream, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return s.OpenStream(ctx, flow.Named(flow.TCP, name, port).Marshal())
	}
	st, err := openNamed("mixed.test")
	if err != nil {
		t.Fatalf("mixed.test: %v", err)
	}
	buf := make([]byte, 2)
	if _, err := st.Read(buf); err != nil || string(buf) != "hi" {
		t.Errorf("mixed.test read %q, %v", buf, err)
	}
	st.Close()
	for name, want := range map[string]error{"outside.test": usl.ErrForbidden, "nxdomain.test": usl.ErrUnreachable} {
		st, err := openNamed(name)
		if !errors.Is(err, want) {
			t.Errorf("%s: err = %v, want %v", name, err, want)
		}
		if st != nil {
			st.Close()
		}
	}
}

// TestExportDNS: flow.Resolver reaches the nameserver of resolv.conf only
// with ExportDNS; without it the unspecified address is forbidden.
func TestExportDNS(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dns := testenv.ServeDNS(pc, map[string][]netip.Addr{"x.test": {netip.MustParseAddr("192.0.2.7")}})
	defer dns.Close()
	server := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	for _, export := range []bool{true, false} {
		s := sessionPairWith(t, Config{Exports: prefixes("0.0.0.0/0"), ExportDNS: export, DNSServer: server, DialTimeout: 2 * time.Second})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := s.OpenStream(ctx, flow.Resolver(flow.UDP).Marshal())
		cancel()
		if !export {
			if !errors.Is(err, usl.ErrForbidden) {
				t.Errorf("without ExportDNS: %v, want forbidden", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("with ExportDNS: %v", err)
		}
		q := dnsQuery(t, "x.test")
		buf := make([]byte, flow.DatagramBuf)
		copy(buf[flow.DatagramHeader:], q)
		flow.WriteDatagram(st, buf[:flow.DatagramHeader+len(q)])
		st.SetReadDeadline(time.Now().Add(3 * time.Second))
		resp, err := flow.ReadDatagram(st, make([]byte, flow.MaxDatagram))
		if err != nil || len(resp) < 12 || resp[0] != q[0] || resp[1] != q[1] {
			t.Fatalf("answer %x, %v", resp, err)
		}
		st.Close()
	}
}

func TestNameserver(t *testing.T) {
	dir := t.TempDir()
	for body, want := range map[string]string{
		"# x\nsearch lab\nnameserver fe80::1%eth0\nnameserver 10.98.0.2\nnameserver 1.1.1.1\n": "10.98.0.2",
		"search lab\n": "127.0.0.1",
	} {
		p := filepath.Join(dir, "resolv.conf")
		os.WriteFile(p, []byte(body), 0o644)
		if got, err := nameserver(p); err != nil || got.String() != want {
			t.Errorf("%q: %v, %v; want %s", body, got, err, want)
		}
	}
	if _, err := nameserver(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing resolv.conf: no error")
	}
}

func dnsQuery(t *testing.T, name string) []byte {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x1234, RecursionDesired: true})
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name + "."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	q, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return q
}
