package main

import (
	"bytes"
	"reflect"
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
			progress{Elapsed: 1500 * time.Millisecond, Delivered: 999, BitsPerS: 3.4e6},
			"   1.5s       999 B delivered     3 Mbit/s",
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

const (
	shaUp   = "569e1c4b77fcc6a1d2a8f0e3c1b2a3d4e5f60718293a4b5c6d7e8f9012345678"
	shaDown = "dcdeb2c8f3121559d2a8f0e3c1b2a3d4e5f60718293a4b5c6d7e8f9012345678"
)

// testReport is a report of one flow, both ways, 3 GiB up and 2 GiB down;
// with corrupt set, the downstream receiver hashed something else.
func testReport(corrupt bool, errs ...loadgen.ErrorEvent) *loadgen.Report {
	down := loadgen.Direction{Sent: 2 << 30, Received: 2 << 30, SentSHA256: shaDown, RecvSHA256: shaDown, Match: true, Mismatch: -1}
	if corrupt {
		down.RecvSHA256, down.Match, down.Mismatch = "0000000000000000"+shaDown[16:], false, 77
	}
	return &loadgen.Report{
		Flows: []loadgen.FlowReport{{
			Up:   loadgen.Direction{Sent: 3 << 30, Received: 3 << 30, SentSHA256: shaUp, RecvSHA256: shaUp, Match: true, Mismatch: -1},
			Down: down,
		}},
		LongestStall: 10190 * time.Millisecond,
		Errors:       errs,
		Verified:     !corrupt && len(errs) == 0,
	}
}

func TestFormatTunnelSummary(t *testing.T) {
	got := formatTunnelSummary(testReport(false), sessionSummary{Reconnects: 6, Retransmitted: 600 << 10}, 190*time.Millisecond)
	want := "" +
		"                       sent        received    sha256 at sender / at receiver\n" +
		"  A → C                3.00 GiB    3.00 GiB    569e1c4b77fcc6a1… / 569e1c4b77fcc6a1…  identical\n" +
		"  C → A                2.00 GiB    2.00 GiB    dcdeb2c8f3121559… / dcdeb2c8f3121559…  identical\n" +
		"  application errors   0\n" +
		"  longest stall        10.19 s\n" +
		"  back after the cut   0.19 s from heal to the next byte\n" +
		"  tunnel               6 reconnects, 600.0 KiB retransmitted\n"
	if got != want {
		t.Errorf("summary\n got:\n%s\nwant:\n%s", got, want)
	}

	// A failed run says so, lists each error, and leaves out an unknown
	// recovery.
	bad := formatTunnelSummary(testReport(true, loadgen.ErrorEvent{Side: "client", Op: "write", Errno: "ECONNRESET", Offset: 5 << 20}),
		sessionSummary{}, -1)
	for _, s := range []string{"dcdeb2c8f3121559… / 0000000000000000…  DIFFERENT", "application errors   1\n", "ECONNRESET on A's write, after 5.0 MiB"} {
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
		loadgen.ErrorEvent{Side: "client", Op: "write", Errno: "EPIPE", Offset: 1011 << 20})
	rep.Flows[0].Up.Received = 418 << 20
	got := formatPlainSummary(rep)
	want := "" +
		"                       sent        received\n" +
		"  A → C                3.00 GiB    418.0 MiB\n" +
		"  C → A                2.00 GiB    2.00 GiB\n" +
		"  application errors   2\n" +
		"                       ECONNRESET on C's read, after 418.0 MiB\n" +
		"                       EPIPE on A's write, after 0.99 GiB\n"
	if got != want {
		t.Errorf("plain summary\n got:\n%s\nwant:\n%s", got, want)
	}
	// A report without flows (the dial failed) still renders.
	if s := formatPlainSummary(&loadgen.Report{}); !strings.Contains(s, "  A → C                0 B         0 B\n") {
		t.Errorf("empty report: %q", s)
	}
}

func TestHumanUnits(t *testing.T) {
	for d, want := range map[time.Duration]string{10 * time.Second: "10 s", 2500 * time.Millisecond: "2.5 s", 23 * time.Second: "23 s"} {
		if got := span(d); got != want {
			t.Errorf("span(%v) = %q, want %q", d, got, want)
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
	st, err := parseStatus([]byte(`{"version":"dev","device":"usl0","session":{"state":"reconnecting","reconnects":3,"retransmitted_bytes":9933,"bytes_out":12,"last_error":"path dead","paths":[{"state":"up"},{"state":"dead"}]},"flows":{"tcp":1}}`))
	if err != nil {
		t.Fatal(err)
	}
	if st.upPaths() != 1 || len(st.Paths) != 2 {
		t.Errorf("paths %+v", st.Paths)
	}
	st.Paths = nil
	if !reflect.DeepEqual(st, sessionStatus{Device: "usl0", State: "reconnecting", Reconnects: 3, RetransmittedBytes: 9933, BytesOut: 12, LastError: "path dead"}) {
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
