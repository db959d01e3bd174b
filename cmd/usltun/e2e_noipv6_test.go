package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/usltun/usltun/tools/loadgen"
)

// TestE2ENoIPv6 runs the basics once more on hosts whose IPv6 is disabled
// (net.ipv6.conf.all.disable_ipv6=1, common on servers and in containers):
// `up` with the default addresses starts, says in one line that usl0 gets
// the IPv4 address only, and carries an HTTP transfer, a transfer across
// TCP resets and a blackhole, and a refused connect; an explicit IPv6
// --address or --route there fails, naming the sysctl.
func TestE2ENoIPv6(t *testing.T) {
	p := newPartition(t, scenario{name: "no_ipv6"}, labOpts{noIPv6: true})

	t.Run("one_line", func(t *testing.T) {
		const want = "IPv6 is disabled on this host: usl0 gets 169.254.117.1/32 only"
		if n := strings.Count(p.DA.Output(), want); n != 1 {
			t.Fatalf("A logged %q %d times, want once:\n%s", want, n, tail(p.DA.Output(), 20))
		}
	})

	t.Run("http", func(t *testing.T) {
		bs := startBlobServer(t, p.C, net.JoinHostPort(addrC4, strconv.Itoa(httpPort)))
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := bs.download(ctx, httpClientOn(p.A), fmt.Sprintf("http://%s:%d/blob", addrC4, httpPort)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("refused", func(t *testing.T) {
		addr := net.JoinHostPort(addrC4, strconv.Itoa(closedPort))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := p.A.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			t.Fatalf("connect to closed port %s succeeded", addr)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("connect to closed port %s: %v (%s), want ECONNREFUSED", addr, err, loadgen.Errno(err))
		}
	})

	t.Run("resets", func(t *testing.T) { scenarioResets(p) })
	t.Run("blackhole", func(t *testing.T) { p.blackhole(2*time.Second, true) })

	t.Run("explicit_ipv6_fails", func(t *testing.T) {
		for _, extra := range [][]string{
			{"--route", "10.96.0.0/24", "--address", "fd75:736c::9/128"},
			{"--route", "fd96::/64"},
		} {
			args := append([]string{e2eBinary, "up", "--tun", "usl9", "--peer", addrB4, "--key", p.aKey, "--peer-key", p.bPub}, extra...)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			out, err := p.A.RunContext(ctx, args...)
			cancel()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != exitRuntime {
				t.Fatalf("%v: %v, want exit %d:\n%s", extra, err, exitRuntime, out)
			}
			if !strings.Contains(out, "net.ipv6.conf.all.disable_ipv6") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
				t.Fatalf("%v: want one line naming the sysctl, got:\n%s", extra, out)
			}
		}
	})
}
