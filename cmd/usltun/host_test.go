package main

import (
	"bytes"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeSys builds a /proc/sys with the given disable_ipv6 values ("" leaves
// net/ipv6 out, as ipv6.disable=1 does).
func fakeSys(t *testing.T, all, def string) string {
	root := t.TempDir()
	if all == "" {
		os.MkdirAll(filepath.Join(root, "net/ipv4"), 0o755)
		return root
	}
	for conf, v := range map[string]string{"all": all, "default": def} {
		dir := filepath.Join(root, "net/ipv6/conf", conf)
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "disable_ipv6"), []byte(v+"\n"), 0o644)
	}
	return root
}

func TestIPv6Off(t *testing.T) {
	for _, c := range []struct{ all, def, want string }{
		{"0", "0", ""},
		{"1", "0", "net.ipv6.conf.all.disable_ipv6=1"},
		{"0", "1", "net.ipv6.conf.default.disable_ipv6=1"},
		{"", "", "ipv6.disable=1 on the kernel command line"},
	} {
		if got := ipv6Off(fakeSys(t, c.all, c.def)); got != c.want {
			t.Errorf("all=%q default=%q: %q, want %q", c.all, c.def, got, c.want)
		}
	}
}

func TestDeviceAddrsWithoutIPv6(t *testing.T) {
	off := fakeSys(t, "1", "1")
	on := fakeSys(t, "0", "0")
	up := func(args ...string) *upCmd {
		t.Helper()
		c, err := parseUp(t, append([]string{"--peer", "a", "--key", "k", "--peer-key", testPeerKey}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	// Defaults: IPv4 only, and one line saying so.
	got, err := up("--route", "10.0.0.0/8").deviceAddrs(off, log)
	if err != nil || len(got) != 1 || got[0] != netip.MustParsePrefix("169.254.117.1/32") {
		t.Fatalf("defaults without IPv6: %v, %v", got, err)
	}
	if n := strings.Count(logs.String(), "IPv6 is disabled on this host: usl0 gets 169.254.117.1/32 only"); n != 1 {
		t.Fatalf("want the line once, log: %q", logs.String())
	}
	// With IPv6 both defaults stay.
	if got, err := up("--route", "10.0.0.0/8").deviceAddrs(on, log); err != nil || len(got) != 2 {
		t.Fatalf("defaults with IPv6: %v, %v", got, err)
	}
	// Asking for IPv6 explicitly fails, naming the sysctl.
	for _, args := range [][]string{
		{"--route", "10.0.0.0/8", "--address", "fd00::1/128"},
		{"--route", "fd20::/64"},
	} {
		_, err := up(args...).deviceAddrs(off, log)
		if err == nil || !strings.Contains(err.Error(), "net.ipv6.conf.all.disable_ipv6") || !strings.Contains(err.Error(), "sysctl -w net.ipv6.conf.all.disable_ipv6=0") {
			t.Errorf("%v without IPv6: %v", args, err)
		}
	}
	// An explicit IPv4 address is fine.
	if got, err := up("--route", "10.0.0.0/8", "--address", "172.31.0.1/32").deviceAddrs(off, log); err != nil || len(got) != 1 {
		t.Fatalf("explicit IPv4 without IPv6: %v, %v", got, err)
	}
}
