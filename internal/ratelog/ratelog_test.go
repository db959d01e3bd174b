package ratelog

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a log sink written by the Log's timer.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Split(strings.TrimSpace(l.b.String()), "\n")
}

// A burst of 1,000 forbidden flows and 10 limit refusals is one line at
// once (the first refusal), then one per kind counting the rest.
func TestAggregates(t *testing.T) {
	const forbidden = "forbidden: destination is not exported"
	var buf lockedBuffer
	const interval = 100 * time.Millisecond
	r := New(slog.New(slog.NewTextHandler(&buf, nil)), slog.LevelWarn, interval)
	for i := range 1000 {
		r.Add(forbidden, "peer", "p1", "last_dst", "tcp:10.0.0."+string(rune('0'+i%10))+":22")
		if i < 10 {
			r.Add("flows refused: the peer is at its flow limit", "max_flows", 4)
		}
	}
	if got := buf.lines(); len(got) != 1 || !strings.Contains(got[0], "count=1 ") {
		t.Fatalf("right after the burst: %q, want one line of the first refusal", got)
	}
	time.Sleep(3 * interval)
	got := buf.lines()
	if len(got) != 3 {
		t.Fatalf("after the interval: %d lines, want 3:\n%s", len(got), strings.Join(got, "\n"))
	}
	// In the order of their kinds' first refusal in the interval.
	if !strings.Contains(got[1], "flow limit") || !strings.Contains(got[1], "count=10 ") {
		t.Errorf("second line %q, want the 10 limit refusals", got[1])
	}
	if !strings.Contains(got[2], "forbidden") || !strings.Contains(got[2], "count=999 ") || !strings.Contains(got[2], "last_dst=tcp:10.0.0.9:22") {
		t.Errorf("third line %q, want the other 999 forbidden flows and the last one's destination", got[2])
	}
	// A refusal after a quiet interval is logged at once again.
	r.Add(forbidden, "peer", "p1", "last_dst", "tcp:10.0.0.1:22")
	if n := len(buf.lines()); n != 4 {
		t.Errorf("a refusal after a quiet interval: %d lines, want 4", n)
	}
}
