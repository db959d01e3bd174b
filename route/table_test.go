package route

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

func TestLongestPrefix(t *testing.T) {
	var tb Table[string]
	for _, e := range [][2]string{
		{"0.0.0.0/0", "default4"}, {"10.0.0.0/8", "ten"}, {"10.20.0.0/16", "twenty"}, {"10.20.3.7/32", "host"},
		{"::/0", "default6"}, {"fd00::/8", "ula"}, {"fd98::/64", "c"}, {"10.20.9.9/16", "twenty-again"},
	} {
		tb.Insert(netip.MustParsePrefix(e[0]), e[1])
	}
	if tb.Len() != 7 {
		t.Errorf("Len = %d, want 7 (10.20.9.9/16 is 10.20.0.0/16 again)", tb.Len())
	}
	for a, want := range map[string]string{
		"10.20.3.7": "host", "10.20.3.8": "twenty-again", "10.1.1.1": "ten", "192.0.2.1": "default4",
		"::ffff:10.20.3.7": "host", "fd98::2": "c", "fd97::1": "ula", "2001:db8::1": "default6",
	} {
		if got, ok := tb.Lookup(netip.MustParseAddr(a)); !ok || got != want {
			t.Errorf("Lookup(%s) = %q, %v; want %q", a, got, ok, want)
		}
	}
	var empty Table[int]
	if _, ok := empty.Lookup(netip.MustParseAddr("10.0.0.1")); ok {
		t.Error("empty table matched")
	}
	if _, ok := empty.Lookup(netip.Addr{}); ok {
		t.Error("invalid address matched")
	}
	var v6only Table[int]
	v6only.Insert(netip.MustParsePrefix("::/0"), 1)
	if _, ok := v6only.Lookup(netip.MustParseAddr("10.0.0.1")); ok {
		t.Error("::/0 matched an IPv4 address")
	}
}

// TestAgainstLinearScan compares with the obvious implementation on random
// prefixes and addresses.
func TestAgainstLinearScan(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var tb Table[int]
	var ps []netip.Prefix
	for i := 0; i < 300; i++ {
		a := netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))})
		p := netip.PrefixFrom(a, 8+r.IntN(25)).Masked()
		tb.Insert(p, i)
		ps = append(ps, p)
	}
	for i := 0; i < 5000; i++ {
		a := netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))})
		want, wantBits := -1, -1
		for j, p := range ps {
			if p.Contains(a) && p.Bits() >= wantBits {
				want, wantBits = j, p.Bits() // a later equal prefix replaced the earlier
			}
		}
		got, ok := tb.Lookup(a)
		if !ok {
			got = -1
		}
		if got != want {
			t.Fatalf("Lookup(%s) = %d, linear scan %d", a, got, want)
		}
	}
}

func BenchmarkLookup(b *testing.B) {
	var tb Table[int]
	for i := 0; i < 1000; i++ {
		tb.Insert(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24), i)
	}
	a := netip.MustParseAddr("10.3.200.1")
	for b.Loop() {
		tb.Lookup(a)
	}
}
