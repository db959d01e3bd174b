package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/usltun/usltun/tools/loadgen"
)

func TestFormatProgress(t *testing.T) {
	for _, tc := range []struct {
		p    progress
		want string
	}{
		{
			progress{Elapsed: 12345 * time.Millisecond, Delivered: 3 << 30, BitsPerS: 2.5e9, Session: "up", Reconnects: 0},
			"  12.3s    3.00 GiB delivered  2.50 Gbit/s  session up            reconnects 0    retransmitted 0 B",
		},
		{
			progress{Elapsed: 7 * time.Second, Delivered: 852 << 20, Session: "reconnecting", Reconnects: 12, Retransmitted: 9933},
			"   7.0s   852.0 MiB delivered      0 bit/s  session reconnecting  reconnects 12   retransmitted 9.7 KiB",
		},
		{ // the plain TCP path has no session
			progress{Elapsed: 1500 * time.Millisecond, Delivered: 1000, BitsPerS: 3.4e6},
			"   1.5s      1000 B delivered     3 Mbit/s",
		},
		{ // the final line carries the average rate
			progress{Elapsed: 20 * time.Second, Delivered: 1 << 30, BitsPerS: 4.3e8, Average: true},
			"  20.0s    1.00 GiB delivered  avg 430 Mbit/s",
		},
	} {
		if got := formatProgress(tc.p); got != tc.want {
			t.Errorf("formatProgress(%+v)\n got %q\nwant %q", tc.p, got, tc.want)
		}
	}
	// Lines of one part keep their width whatever the state, so the
	// carriage-return rewrite leaves no stale characters.
	a := formatProgress(progress{Session: "up"})
	b := formatProgress(progress{Session: "reconnecting", Reconnects: 99})
	if len(a) != len(b) {
		t.Errorf("progress width varies: %d vs %d", len(a), len(b))
	}
}

func TestRateMeter(t *testing.T) {
	m := rateMeter{window: time.Second}
	if r := m.add(0, 0); r != 0 {
		t.Fatalf("first sample: rate %v", r)
	}
	// 1 MB per 250 ms is 32 Mbit/s.
	var r float64
	for i := 1; i <= 8; i++ {
		r = m.add(time.Duration(i)*250*time.Millisecond, int64(i)*1e6)
	}
	if r != 32e6 {
		t.Fatalf("steady rate %v, want 32e6", r)
	}
	// A stall: the window forgets the old rate within a second.
	for i := 9; i <= 12; i++ {
		r = m.add(time.Duration(i)*250*time.Millisecond, 8e6)
	}
	if r != 0 {
		t.Fatalf("rate after a 1 s stall %v, want 0", r)
	}
	if len(m.samples) > 6 {
		t.Fatalf("meter keeps %d samples; the window needs 5", len(m.samples))
	}
}

func testReport(match bool, errs ...loadgen.ErrorEvent) *loadgen.Report {
	sha := "569e1c4b77fcc6a1d2a8f0e3c1b2a3d4e5f60718293a4b5c6d7e8f9012345678"
	recv := sha
	if !match {
		recv = "0000000000000000d2a8f0e3c1b2a3d4e5f60718293a4b5c6d7e8f9012345678"
	}
	return &loadgen.Report{
		Flows: []loadgen.FlowReport{{Up: loadgen.Direction{
			Sent: 3 << 30, Received: 3 << 30, SentSHA256: sha, RecvSHA256: recv, Match: match, Mismatch: -1,
		}}},
		LongestStall: 10190 * time.Millisecond,
		Errors:       errs,
		Verified:     match && len(errs) == 0,
	}
}

func TestFormatTunnelSummary(t *testing.T) {
	got := formatTunnelSummary(testReport(true), sessionSummary{Reconnects: 6, Retransmitted: 600 << 10}, 190*time.Millisecond)
	want := "" +
		"  sent by A            3.00 GiB    sha256 569e1c4b77fcc6a1…\n" +
		"  received by C        3.00 GiB    sha256 569e1c4b77fcc6a1…  identical\n" +
		"  application errors   0\n" +
		"  longest stall        10.19 s\n" +
		"  back after the cut   0.19 s from heal to the next byte at C\n" +
		"  tunnel               6 reconnects, 600.0 KiB retransmitted\n"
	if got != want {
		t.Errorf("summary\n got:\n%s\nwant:\n%s", got, want)
	}

	// A failed run says so, lists each error, and leaves out an unknown
	// recovery.
	bad := formatTunnelSummary(testReport(false, loadgen.ErrorEvent{Side: "client", Op: "write", Errno: "ECONNRESET", Offset: 5 << 20}),
		sessionSummary{}, -1)
	for _, s := range []string{"0000000000000000…  DIFFERENT", "application errors   1\n", "ECONNRESET on A's write, after 5.0 MiB"} {
		if !strings.Contains(bad, s) {
			t.Errorf("failed summary lacks %q:\n%s", s, bad)
		}
	}
	if strings.Contains(bad, "back after the cut") {
		t.Errorf("unknown recovery printed:\n%s", bad)
	}
}

func TestFormatPlainSummary(t *testing.T) {
	rep := testReport(false,
		loadgen.ErrorEvent{Side: "server", Op: "read", Errno: "ECONNRESET", Offset: 418 << 20},
		loadgen.ErrorEvent{Side: "client", Op: "write", Errno: "EPIPE", Offset: 419 << 20})
	rep.Flows[0].Up.Received = 418 << 20
	got := formatPlainSummary(rep)
	want := "" +
		"  sent by A            3.00 GiB\n" +
		"  received by C        418.0 MiB\n" +
		"  application errors   2\n" +
		"                       ECONNRESET on C's read, after 418.0 MiB\n" +
		"                       EPIPE on A's write, after 419.0 MiB\n"
	if got != want {
		t.Errorf("plain summary\n got:\n%s\nwant:\n%s", got, want)
	}
	// A report without flows (the dial failed) still renders.
	if s := formatPlainSummary(&loadgen.Report{}); !strings.Contains(s, "sent by A            0 B") {
		t.Errorf("empty report: %q", s)
	}
}

func TestHumanUnits(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 5 << 20: "5.0 MiB", 3 << 30: "3.00 GiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
	for r, want := range map[float64]string{0: "0 bit/s", 999: "999 bit/s", 47e3: "47 kbit/s", 785.4e6: "785 Mbit/s", 2.516e9: "2.52 Gbit/s"} {
		if got := humanRate(r); got != want {
			t.Errorf("humanRate(%v) = %q, want %q", r, got, want)
		}
	}
	if got := shortHash("abc"); got != "abc" {
		t.Errorf("shortHash short = %q", got)
	}
	if got := shortHash(""); got != "(none)" {
		t.Errorf("shortHash empty = %q", got)
	}
}

func TestParseStatus(t *testing.T) {
	st, err := parseStatus([]byte(`{"version":"dev","session":{"state":"reconnecting","reconnects":3,"retransmitted_bytes":9933,"bytes_out":12,"last_error":"path dead"},"flows":{"tcp":1}}`))
	if err != nil {
		t.Fatal(err)
	}
	if st != (sessionStatus{State: "reconnecting", Reconnects: 3, RetransmittedBytes: 9933, BytesOut: 12, LastError: "path dead"}) {
		t.Errorf("parsed %+v", st)
	}
	// A listener without a peer yet reports a null session.
	if st, err := parseStatus([]byte(`{"session":null}`)); err != nil || st.State != "connecting" {
		t.Errorf("null session: %+v, %v", st, err)
	}
	if _, err := parseStatus([]byte("no daemon")); err == nil {
		t.Error("garbage parsed")
	}
}

func TestConsoleWithoutTerminal(t *testing.T) {
	var buf bytes.Buffer
	c := newConsole(&buf)
	if c.tty {
		t.Fatal("a buffer taken for a terminal")
	}
	c.progress("p1")
	c.progress("p2") // within pipeEvery of p1: dropped
	c.say("step %d", 1)
	c.keep("final")
	if got, want := buf.String(), "p1\nstep 1\nfinal\n"; got != want {
		t.Errorf("output %q, want %q", got, want)
	}
}

func TestConsoleOnTerminal(t *testing.T) {
	var buf bytes.Buffer
	c := &console{w: &buf, tty: true, width: 12}
	c.progress("abcdef")
	c.progress("abc")                 // shorter: padded over the old text
	c.progress("0123456789abcdefghi") // cut to the width, or it would wrap
	c.say("hi")
	want := "\rabcdef" + "\rabc   " + "\r0123456789a" + "\r           \r" + "hi\n"
	if got := buf.String(); got != want {
		t.Errorf("output %q, want %q", got, want)
	}
}

func TestValidate(t *testing.T) {
	good := options{Warmup: 4 * time.Second, Blackhole: 10 * time.Second, Resets: 5, Tail: 3 * time.Second}
	if err := good.validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []options{
		{Warmup: 0, Blackhole: 10 * time.Second, Resets: 5},
		{Warmup: time.Second, Blackhole: 0, Resets: 5},
		{Warmup: time.Second, Blackhole: time.Second, Resets: 0},
		{Warmup: time.Second, Blackhole: time.Second, Resets: 21},
		{Warmup: time.Second, Blackhole: time.Second, Resets: 1, Tail: -1},
	} {
		if err := bad.validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}
