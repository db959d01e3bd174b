package flow

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	for _, s := range []string{"10.20.0.5:80", "[fd00::1]:443", "0.0.0.0:0", "[::ffff:1.2.3.4]:53"} {
		for _, p := range []Proto{TCP, UDP} {
			d := Dest{Proto: p, Addr: netip.MustParseAddrPort(s)}
			b := d.Marshal()
			got, err := Parse(b)
			if err != nil {
				t.Fatalf("%v: %v", d, err)
			}
			want := netip.AddrPortFrom(d.Addr.Addr().Unmap(), d.Addr.Port())
			if got.Proto != p || got.Addr != want || got.Name != "" {
				t.Fatalf("round trip %v: got %v", d, got)
			}
			if wantLen := map[bool]int{true: 10, false: 22}[want.Addr().Is4()]; len(b) != wantLen {
				t.Fatalf("%v encodes as %d bytes, want %d", d, len(b), wantLen)
			}
		}
	}
	n := Named(TCP, "db.internal", 5432)
	got, err := Parse(n.Marshal())
	if err != nil || got != n || got.HostPort() != "db.internal:5432" || len(n.Marshal()) != 6+len("db.internal") {
		t.Fatalf("named round trip: %v, %v", got, err)
	}
	ping := Dest{Proto: ICMP, Addr: netip.MustParseAddrPort("10.1.2.3:0")}
	if got, err := Parse(ping.Marshal()); err != nil || got != ping {
		t.Fatalf("icmp round trip: %v, %v", got, err)
	}
}

func TestParseErrors(t *testing.T) {
	good := Dest{Proto: TCP, Addr: netip.MustParseAddrPort("10.0.0.1:22")}.Marshal()
	cases := map[string][]byte{
		"empty":        nil,
		"short":        good[:3],
		"version":      append([]byte{1}, good[1:]...),
		"proto":        {2, 2, 4, 4, 10, 0, 0, 1, 0, 22},
		"kind":         {2, 6, 5, 4, 10, 0, 0, 1, 0, 22},
		"kind/len":     {2, 6, 6, 4, 10, 0, 0, 1, 0, 22},
		"truncated":    good[:len(good)-1],
		"trailing":     append(bytes.Clone(good), 0),
		"icmp port":    Dest{Proto: ICMP, Addr: netip.MustParseAddrPort("10.0.0.1:7")}.Marshal(),
		"name empty":   {2, 6, 'N', 0, 0, 80},
		"name address": Named(TCP, "10.0.0.1", 80).Marshal(),
		"name chars":   Named(TCP, "a b", 80).Marshal(),
		"name label":   Named(TCP, "a..b", 80).Marshal(),
		"name dot":     Named(TCP, "a.", 80).Marshal(),
		"name long":    Named(TCP, strings.Repeat("a", 64)+".b", 80).Marshal(),
	}
	for name, b := range cases {
		if _, err := Parse(b); err == nil {
			t.Errorf("%s: Parse(%x) succeeded", name, b)
		}
	}
}

func TestErrorIs(t *testing.T) {
	err := fmt.Errorf("dial: %w", &Error{Reason: Refused, Err: errors.New("stream reset")})
	if !errors.Is(err, ErrRefused) || errors.Is(err, ErrForbidden) {
		t.Fatalf("errors.Is mismatch for %v", err)
	}
	if ErrTimeout.Error() != "flow timeout" {
		t.Fatalf("ErrTimeout = %q", ErrTimeout.Error())
	}
}

func TestDatagramFraming(t *testing.T) {
	var stream bytes.Buffer
	for _, n := range []int{0, 1, 1500, MaxDatagram} {
		buf := make([]byte, DatagramHeader+n)
		for i := range n {
			buf[DatagramHeader+i] = byte(i)
		}
		if err := WriteDatagram(&stream, buf); err != nil {
			t.Fatal(err)
		}
	}
	if err := WriteDatagram(&stream, make([]byte, DatagramBuf+1)); err == nil {
		t.Fatal("oversized datagram accepted")
	}
	rb := make([]byte, MaxDatagram)
	for _, n := range []int{0, 1, 1500, MaxDatagram} {
		p, err := ReadDatagram(&stream, rb)
		if err != nil || len(p) != n || (n > 0 && p[n-1] != byte(n-1)) {
			t.Fatalf("datagram of %d: got %d bytes, %v", n, len(p), err)
		}
	}
	if _, err := ReadDatagram(&stream, rb); err != io.EOF {
		t.Fatalf("at the end: %v, want EOF", err)
	}
	if _, err := ReadDatagram(bytes.NewReader([]byte{0, 5, 1, 2}), rb); err != io.ErrUnexpectedEOF {
		t.Fatalf("cut record: %v, want ErrUnexpectedEOF", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(Dest{Proto: TCP, Addr: netip.MustParseAddrPort("10.0.0.1:22")}.Marshal())
	f.Add(Dest{Proto: UDP, Addr: netip.MustParseAddrPort("[fd00::1]:53")}.Marshal())
	f.Add(Named(TCP, "git.internal", 443).Marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := Parse(b)
		if err != nil {
			return
		}
		if !bytes.Equal(d.Marshal(), b) {
			t.Fatalf("Parse(%x) = %v, re-encodes as %x", b, d, d.Marshal())
		}
	})
}
