package testenv

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestLabOutsideTesting uses the lab the way a tool (make demo) does.
func TestLabOutsideTesting(t *testing.T) {
	requireRoot(t)
	lab := NewLab(nil)
	a, b := NewHost(lab, "a"), NewHost(lab, "b")
	l := Link(lab, a, b, "10.9.0.1/24", "10.9.0.2/24")
	p := b.Start(lab, "sleeper", "sleep", "600")
	rss, err := p.RSS()
	if err != nil || rss <= 0 {
		t.Fatalf("rss %d: %v", rss, err)
	}
	ln, err := b.Listen("tcp", "10.9.0.2:7300")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := a.WaitDial("tcp", "10.9.0.2:7300", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := l.Blackhole(); err != nil {
		t.Fatal(err)
	}
	if err := a.WaitDial("tcp", "10.9.0.2:7300", 300*time.Millisecond); err == nil {
		t.Fatal("dial through a blackhole succeeded")
	}
	names := []string{a.Path(), b.Path()}
	lab.Close()
	for _, n := range names {
		if _, err := os.Stat(n); !os.IsNotExist(err) {
			t.Errorf("%s survived Lab.Close", n)
		}
	}
	if p.Running() {
		t.Error("process survived Lab.Close")
	}
	if lab.Failed() {
		t.Error("lab reported a failure")
	}

	// Fatalf panics with a *FatalError, which Recover turns into an error,
	// after the deferred Close has removed what was built.
	err = func() (err error) {
		lab2 := NewLab(nil)
		defer lab2.Recover(&err)
		defer lab2.Close()
		h := NewHost(lab2, "x")
		h.AddRoute("10.99.0.0/16", "not-an-ip")
		return nil
	}()
	if err == nil || !strings.Contains(err.Error(), "not-an-ip") {
		t.Fatalf("Fatalf through Recover: %v", err)
	}
}

func TestHealRemovesRules(t *testing.T) {
	requireRoot(t)
	_, _, l := pair(t)
	if err := l.Loss(10); err != nil {
		t.Fatal(err)
	}
	if err := l.Blackhole(); err != nil {
		t.Fatal(err)
	}
	if !hasRules(t, l.A, l.A.tableName()) || !hasRules(t, l.B, l.B.tableName()) {
		t.Fatal("fault rules missing")
	}
	if err := l.Heal(); err != nil {
		t.Fatal(err)
	}
	if err := l.Heal(); err != nil { // idempotent
		t.Fatal(err)
	}
	if hasRules(t, l.A, l.A.tableName()) || hasRules(t, l.B, l.B.tableName()) {
		t.Fatal("Heal left nftables rules behind")
	}
}
