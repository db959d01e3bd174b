package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/alecthomas/kong"
)

func TestByteSize(t *testing.T) {
	for in, want := range map[string]byteSize{"32MiB": 32 << 20, "512KiB": 512 << 10, "1048576": 1 << 20, "2G": 2 << 30, "7B": 7} {
		var b byteSize
		if err := b.UnmarshalText([]byte(in)); err != nil || b != want {
			t.Errorf("%q: got %d, %v; want %d", in, b, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "1.5MiB", "12XB", "99999999999GiB"} {
		var b byteSize
		if err := b.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("%q parsed as %d", in, b)
		}
	}
	if s := byteSize(32 << 20).String(); s != "32MiB" {
		t.Errorf("String = %s", s)
	}
}

func TestWithDefaultPort(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.2":      "10.0.0.2:7400",
		"10.0.0.2:9":    "10.0.0.2:9",
		"fd00::2":       "[fd00::2]:7400",
		"[fd00::2]":     "[fd00::2]:7400",
		"[fd00::2]:443": "[fd00::2]:443",
		"gw.example":    "gw.example:7400",
	} {
		if got := withDefaultPort(in); got != want {
			t.Errorf("withDefaultPort(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestHasCapNetAdmin(t *testing.T) {
	if !hasCapNetAdmin("Name:\tx\nCapEff:\t0000000000001000\n") {
		t.Error("bit 12 set, not detected")
	}
	if hasCapNetAdmin("CapEff:\t0000000000000fff\n") {
		t.Error("bit 12 clear, detected")
	}
}

func parseUp(t *testing.T, args ...string) (*upCmd, error) {
	t.Helper()
	var c cli
	p, err := kong.New(&c, kong.Configuration(loadConfig), kong.Vars{"default_port": "7400"}, kong.Exit(func(int) { t.Fatal("kong exited") }))
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Parse(append([]string{"up"}, args...))
	return &c.Up, err
}

func TestConfigFileTOMLAndFlagPrecedence(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "a.toml")
	os.WriteFile(cfg, []byte(`
peer = "10.0.0.2"
key = "/etc/a.key"
peer_key = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
route = ["10.20.0.0/16", "fd20::/64"]
session_timeout = "30s"
replay_buffer = "8MiB"
max_flows = 100
`), 0o600)
	up, err := parseUp(t, "--config", cfg, "--max-flows", "7")
	if err != nil {
		t.Fatal(err)
	}
	if up.Peer != "10.0.0.2" || up.Key != "/etc/a.key" || up.SessionTimeout != 30*time.Second || up.ReplayBuffer != 8<<20 {
		t.Fatalf("config not applied: %+v", up)
	}
	if len(up.Route) != 2 || up.Route[1] != netip.MustParsePrefix("fd20::/64") {
		t.Fatalf("routes = %v", up.Route)
	}
	if up.MaxFlows != 7 {
		t.Fatalf("flag did not win over file: max_flows = %d", up.MaxFlows)
	}
}

func TestUpValidation(t *testing.T) {
	key := []string{"--key", "k", "--peer-key", "p"}
	cases := []struct {
		args []string
		want string
	}{
		{key, "exactly one of --peer"},
		{append([]string{"--peer", "a", "--listen", ":1"}, key...), "exactly one of --peer"},
		{append([]string{"--peer", "a", "--mtu", "100"}, key...), "--mtu 100"},
		{append([]string{"--peer", "a", "--route", "10.1.2.3/16"}, key...), "did you mean 10.1.0.0/16"},
		{append([]string{"--peer", "a", "--replay-buffer", "12"}, key...), "too small"},
		{append([]string{"--peer", "a", "--replay-buffer", "lots"}, key...), "is not a size"},
		{append([]string{"--peer", "a", "--route", "10.0.0.0/33"}, key...), "10.0.0.0/33"},
		{append([]string{"--peer", "a", "--route", "169.254.0.0/16"}, key...), "--address 169.254.117.1/32 is inside --route 169.254.0.0/16"},
	}
	for _, c := range cases {
		_, err := parseUp(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err = %v, want it to mention %q", c.args, err, c.want)
		}
	}
}
