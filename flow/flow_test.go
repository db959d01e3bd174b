package flow

import (
	"bytes"
	"net/netip"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	for _, s := range []string{"10.20.0.5:80", "[fd00::1]:443", "0.0.0.0:0", "[::ffff:1.2.3.4]:53"} {
		for _, p := range []Proto{TCP, UDP} {
			d := Dest{Proto: p, Addr: netip.MustParseAddrPort(s)}
			got, err := Parse(d.Marshal())
			if err != nil {
				t.Fatalf("%v: %v", d, err)
			}
			want := netip.AddrPortFrom(d.Addr.Addr().Unmap(), d.Addr.Port())
			if got.Proto != p || got.Addr != want {
				t.Fatalf("round trip %v: got %v", d, got)
			}
		}
	}
}

func TestParseErrors(t *testing.T) {
	good := Dest{Proto: TCP, Addr: netip.MustParseAddrPort("10.0.0.1:22")}.Marshal()
	cases := map[string][]byte{
		"empty":     nil,
		"short":     good[:2],
		"version":   append([]byte{9}, good[1:]...),
		"proto":     {1, 1, 4, 10, 0, 0, 1, 0, 22},
		"addr len":  {1, 6, 5, 10, 0, 0, 1, 0, 0, 22},
		"truncated": good[:len(good)-1],
		"trailing":  append(bytes.Clone(good), 0),
	}
	for name, b := range cases {
		if _, err := Parse(b); err == nil {
			t.Errorf("%s: Parse(%x) succeeded", name, b)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(Dest{Proto: TCP, Addr: netip.MustParseAddrPort("10.0.0.1:22")}.Marshal())
	f.Add(Dest{Proto: UDP, Addr: netip.MustParseAddrPort("[fd00::1]:53")}.Marshal())
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
