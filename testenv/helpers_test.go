package testenv

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("testenv tests build network namespaces and need root; run as root (e.g. sudo go test ./testenv/...)")
	}
}

// pair builds a—b on 10.0.0.0/24 and fd10::/64.
func pair(t *testing.T) (a, b *Host, l *LinkPair) {
	t.Helper()
	a, b = NewHost(t, "a"), NewHost(t, "b")
	l = Link(t, a, b, "10.0.0.1/24,fd10::1/64", "10.0.0.2/24,fd10::2/64")
	return a, b, l
}

// echoServer accepts on ln and echoes every connection until the test
// ends; then the listener and all connections are closed and their
// goroutines waited for.
func echoServer(t *testing.T, ln net.Listener) {
	t.Helper()
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

// roundTrip writes msg and reads it back within timeout.
func roundTrip(c net.Conn, msg []byte, timeout time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(c, buf)
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// hasRules reports whether e's host has rules in the nftables table called
// name (the lab keeps a link's tables, empty, once it made them).
func hasRules(t *testing.T, e *End, name string) bool {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(e.Host.ns)))
	if err != nil {
		t.Fatal(err)
	}
	chains, err := c.ListChains()
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range chains {
		if ch.Table.Name != name {
			continue
		}
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			t.Fatal(err)
		}
		if len(rules) > 0 {
			return true
		}
	}
	return false
}
