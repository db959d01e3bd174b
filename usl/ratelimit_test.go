package usl

import (
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestPrefixLimiter: buckets refill at the rate, IPv6 sources share their
// /64 and IPv4 sources get one each, and a full table evicts the source
// seen least recently instead of refusing a new one.
func TestPrefixLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	pl := newPrefixLimiter(10, 2, 3)
	key := func(s string) netip.Prefix {
		p, ok := sourcePrefix(&net.TCPAddr{IP: net.ParseIP(s), Port: 1})
		if !ok {
			t.Fatalf("no prefix for %s", s)
		}
		return p
	}
	if a, b := key("2001:db8::1"), key("2001:db8::ffff:1"); a != b || a.Bits() != 64 {
		t.Fatalf("one /64: %v and %v", a, b)
	}
	if a := key("::ffff:10.0.0.1"); a != netip.MustParsePrefix("10.0.0.1/32") {
		t.Fatalf("mapped IPv4: %v", a)
	}
	if _, ok := sourcePrefix(memAddr("pipe")); ok {
		t.Fatal("a non-IP address has a prefix")
	}
	a := key("10.0.0.1")
	if !pl.allow(a, now) || !pl.allow(a, now) || pl.allow(a, now) {
		t.Fatal("burst of 2 not enforced")
	}
	if !pl.allow(a, now.Add(100*time.Millisecond)) || pl.allow(a, now.Add(100*time.Millisecond)) {
		t.Fatal("10/s refill not one token per 100 ms")
	}
	// Fill the table (size 3) and go on: every new source is allowed, and
	// the least recently seen one (a) is the one forgotten.
	for _, s := range []string{"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"} {
		if !pl.allow(key(s), now) {
			t.Fatalf("new source %s refused with a full table", s)
		}
	}
	if len(pl.m) != 3 {
		t.Fatalf("table holds %d, size 3", len(pl.m))
	}
	if _, ok := pl.m[a]; ok {
		t.Fatal("the least recently seen source was not the one evicted")
	}
	if !pl.allow(a, now.Add(100*time.Millisecond)) || !pl.allow(a, now.Add(100*time.Millisecond)) {
		t.Fatal("an evicted source comes back with a fresh bucket")
	}
}

// TestRejectLog: rejections become one line per window, with counts by
// reason (largest first), distinct source prefixes and thousands
// separators; nothing is written for a quiet window.
func TestRejectLog(t *testing.T) {
	rec := &logRecorder{}
	rl := newRejectLog(slog.New(rec), 100*time.Millisecond)
	for i := range 1204 {
		reason := rejUnknownKey
		if i%12 == 0 {
			reason = rejGarbage
		}
		rl.add(&net.TCPAddr{IP: net.IPv4(10, 0, byte(i%87/256), byte(i%87)), Port: 1000 + i}, reason, "")
	}
	line := rec.wait(t, "rejected ")
	want := "rejected 1,204 handshakes from 87 sources in the last 100ms (unknown key: 1,103, garbage: 101)"
	if line != want {
		t.Fatalf("line %q\nwant %q", line, want)
	}
	time.Sleep(250 * time.Millisecond)
	if n := len(rejectLines(rec)); n != 1 {
		t.Fatalf("%d lines after a quiet window", n)
	}
	rl.add(&net.TCPAddr{IP: net.IPv6loopback, Port: 1}, rejReplay, "key K")
	rl.close()
	lines := rejectLines(rec)
	if len(lines) != 2 || !strings.HasPrefix(lines[1], "rejected 1 handshake from 1 source") {
		t.Fatalf("close did not flush one line: %q", lines)
	}
	rl.add(&net.TCPAddr{IP: net.IPv6loopback, Port: 1}, rejReplay, "")
	time.Sleep(150 * time.Millisecond)
	if n := len(rejectLines(rec)); n != 2 {
		t.Fatal("a closed log still writes")
	}
	for n, s := range map[int]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567"} {
		if got := thousands(n); got != s {
			t.Errorf("thousands(%d) = %q", n, got)
		}
	}
}

// TestParseSack: the SACK validation multipath will rely on.
func TestParseSack(t *testing.T) {
	enc := func(rs ...uint64) []byte {
		var b []byte
		for _, v := range rs {
			b = append(b, byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32), byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
		}
		return b
	}
	for _, tc := range []struct {
		name string
		b    []byte
		ack  uint64
		ok   bool
	}{
		{"one range", enc(7, 9), 5, true},
		{"two ranges", enc(7, 9, 11, 11), 5, true},
		{"range at the ack", enc(5, 9), 5, false},
		{"first after last", enc(9, 7), 5, false},
		{"overlap", enc(7, 9, 9, 12), 5, false},
		{"unsorted", enc(11, 12, 7, 9), 5, false},
		{"empty", nil, 5, false},
		{"ragged", enc(7, 9)[:12], 5, false},
		{"33 ranges", make([]byte, 33*16), 0, false},
	} {
		_, err := parseSack(tc.b, tc.ack)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}
