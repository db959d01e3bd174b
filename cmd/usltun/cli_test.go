package main

import (
	"fmt"
	"github.com/usltun/usltun/netstack"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usltun/usltun/usl"
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
	p, err := newParser(&c, io.Discard, io.Discard)
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
	if len(up.Peer) != 1 || up.Peer[0] != "10.0.0.2" || up.Key != "/etc/a.key" || up.SessionTimeout != 30*time.Second || up.ReplayBuffer != 8<<20 {
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
	key := []string{"--key", "k", "--peer-key", testPeerKey}
	cases := []struct {
		args []string
		want string
	}{
		{key, "exactly one of --peer"},
		{append([]string{"--peer", "a", "--listen", ":1"}, key...), "exactly one of --peer"},
		{append([]string{"--peer", "a", "--mtu", "100"}, key...), "--mtu 100"},
		{append([]string{"--peer", "a", "--procs=-1"}, key...), "--procs -1: give a number of CPUs"},
		{append([]string{"--peer", "a", "--route", "10.1.2.3/16"}, key...), "did you mean 10.1.0.0/16"},
		{append([]string{"--peer", "a", "--replay-buffer", "12"}, key...), "too small"},
		{append([]string{"--peer", "a", "--replay-buffer", "lots"}, key...), "is not a size"},
		{append([]string{"--peer", "a", "--route", "10.0.0.0/33"}, key...), "10.0.0.0/33"},
		{append([]string{"--peer", "a", "--route", "169.254.0.0/16"}, key...), "--address 169.254.117.1/32 is inside --route 169.254.0.0/16"},
		{append([]string{"--peer", "a", "--socks", "0.0.0.0:1080"}, key...), "--socks 0.0.0.0:1080 would accept clients from other machines without authentication"},
		{append([]string{"--peer", "a", "--http-proxy", "[::]:8080"}, key...), "--http-proxy [::]:8080 would accept clients from other machines without authentication"},
		{append([]string{"--peer", "a", "--proxy-auth", "f"}, key...), "--proxy-auth is for --socks and --http-proxy"},
		{append([]string{"--peer", "a", "--route", "10.0.0.0/8", "--export", "10.20.0.0/16"}, key...), "--export 10.20.0.0/16 overlaps --route 10.0.0.0/8"},
		{append([]string{"--listen", ":1", "--route", "fd20::/64", "--export", "::/0"}, key...), "--export ::/0 overlaps --route fd20::/64"},
	}
	for _, c := range cases {
		_, err := parseUp(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err = %v, want it to mention %q", c.args, err, c.want)
		}
	}
}

// testPeerKey is a valid public key for command lines that must get past
// --peer-key.
var testPeerKey = func() string {
	k, err := usl.GeneratePrivateKey()
	if err != nil {
		panic(err)
	}
	return k.Public().String()
}()

// runCLI runs the command line in process and returns its exit status and
// what it wrote.
func runCLI(args ...string) (code int, stdout, stderr string) {
	var o, e strings.Builder
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

// Each usage or validation error is one line saying what is wrong, then one
// line naming the --help to read, and exit status 2: no usage dump.
func TestUsageErrorsAreOneLine(t *testing.T) {
	key := []string{"--key", "k", "--peer-key", testPeerKey}
	cases := []struct {
		args []string
		want string // in the first line
		help string // the command in the hint
	}{
		{[]string{"up"}, "missing flags", "usltun up"},
		{key, "exactly one of --peer", "usltun up"},
		{append([]string{"up", "--peer", "a", "--route", "10.0.0.1/8"}, key...), "did you mean 10.0.0.0/8", "usltun up"},
		{append([]string{"up", "--peer", "a", "--route", "nonsense"}, key...), "nonsense", "usltun up"},
		{[]string{"up", "--peer", "a", "--key", "k", "--peer-key", "short"}, "usltun pubkey", "usltun up"},
		{append([]string{"up", "--peer", "a", "--log-level", "loud"}, key...), "loud", "usltun up"},
		{append([]string{"up", "--listen", ":1", "--bogus"}, key...), "--bogus", "usltun up"},
		{[]string{"frobnicate"}, "frobnicate", "usltun"},
		{[]string{"completion", "tcsh"}, "tcsh", "usltun completion"},
		{[]string{"status", "--json=maybe"}, "maybe", "usltun status"},
	}
	for _, c := range cases {
		if c.args[0] == "--key" {
			c.args = append([]string{"up"}, c.args...)
		}
		code, stdout, stderr := runCLI(c.args...)
		lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
		switch {
		case code != exitUsage:
			t.Errorf("%v: exit %d, want %d; stderr %q", c.args, code, exitUsage, stderr)
		case stdout != "":
			t.Errorf("%v: wrote to stdout: %q", c.args, stdout)
		case len(lines) != 2:
			t.Errorf("%v: %d lines on stderr, want 2:\n%s", c.args, len(lines), stderr)
		case !strings.HasPrefix(lines[0], "usltun: ") || !strings.Contains(lines[0], c.want):
			t.Errorf("%v: first line %q, want 'usltun: ...%s...'", c.args, lines[0], c.want)
		case lines[1] != "run '"+c.help+" --help' for usage":
			t.Errorf("%v: hint %q, want %q", c.args, lines[1], "run '"+c.help+" --help' for usage")
		}
	}
}

// A failure at run time is one line and exit status 1.
func TestRuntimeErrorExitsOne(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.key")
	code, _, stderr := runCLI("up", "--listen", "127.0.0.1:0", "--key", missing, "--peer-key", testPeerKey)
	if code != exitRuntime || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "usltun genkey > "+missing) {
		t.Fatalf("exit %d, stderr %q; want 1 and one line with the genkey hint", code, stderr)
	}
}

func TestHelpAndVersion(t *testing.T) {
	code, stdout, _ := runCLI("up", "--help")
	if code != exitOK || !strings.Contains(stdout, "--max-streams") {
		t.Fatalf("up --help: exit %d, stdout %q", code, stdout)
	}
	code, stdout, _ = runCLI("version")
	if code != exitOK || stdout != fmt.Sprintf("usltun %s (USL protocol v%d)\n", version, usl.ProtocolVersion) {
		t.Fatalf("version: exit %d, %q", code, stdout)
	}
}

// The flags state the library's own defaults, not numbers of their own.
func TestFlagDefaultsComeFromTheLibrary(t *testing.T) {
	up, err := parseUp(t, "--peer", "a", "--key", "k", "--peer-key", testPeerKey)
	if err != nil {
		t.Fatal(err)
	}
	if up.MaxStreams != usl.DefaultMaxStreams || int(up.ReplayBuffer) != usl.DefaultReplayBuffer ||
		up.DeadInterval != usl.DefaultDeadInterval || up.HandshakeRate != usl.DefaultHandshakeRate ||
		up.MaxFlows != netstack.DefaultMaxFlows {
		t.Fatalf("defaults differ from the library: %+v", up)
	}
}

// The bash script parses, and completes commands, flags and enum values.
func TestCompletionBash(t *testing.T) {
	code, script, stderr := runCLI("completion", "bash")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if _, err := exec.LookPath("bash"); err != nil {
		t.Fatal("bash is not installed")
	}
	if out, err := exec.Command("bash", "-n", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	complete := func(words ...string) string {
		t.Helper()
		prog := script + fmt.Sprintf("\nCOMP_WORDS=(%s); COMP_CWORD=%d; _usltun; echo \"${COMPREPLY[*]}\"\n", shellWords(words), len(words)-1)
		out, err := exec.Command("bash", "-c", prog).CombinedOutput()
		if err != nil {
			t.Fatalf("bash: %v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	for _, c := range []struct {
		words []string
		want  string
	}{
		{[]string{"usltun", "st"}, "status"},
		{[]string{"usltun", "up", "--log-l"}, "--log-level"},
		{[]string{"usltun", "up", "--log-level", ""}, "debug info warn error"},
		{[]string{"usltun", "completion", "f"}, "fish"},
	} {
		if got := complete(c.words...); got != c.want {
			t.Errorf("complete %q = %q, want %q", c.words, got, c.want)
		}
	}
}

func shellWords(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = "'" + w + "'"
	}
	return strings.Join(q, " ")
}

// zsh and fish check the syntax of their scripts where they are installed.
func TestCompletionZshFish(t *testing.T) {
	for _, sh := range []string{"zsh", "fish"} {
		code, script, _ := runCLI("completion", sh)
		if code != exitOK || !strings.Contains(script, "max-streams") {
			t.Fatalf("completion %s: exit %d, script %q", sh, code, script)
		}
		if _, err := exec.LookPath(sh); err != nil {
			t.Logf("%s not installed: its script's syntax is not checked", sh)
			continue
		}
		if out, err := exec.Command(sh, "-n", "-c", script).CombinedOutput(); err != nil {
			t.Errorf("%s -n: %v\n%s", sh, err, out)
		}
	}
}

// The manual page is written from the kong model: every visible flag of
// every command is in it, and the hidden man command is not.
func TestManPage(t *testing.T) {
	code, page, stderr := runCLI("man")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var c cli
	p, err := newParser(&c, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range completionModel(p.Model) {
		if !strings.Contains(page, ".SS \""+cmd.name) {
			t.Errorf("no section for %s", cmd.name)
		}
		for _, f := range cmd.flags {
			if f.name != "help" && !strings.Contains(page, ".B \\-\\-"+strings.ReplaceAll(f.name, "-", `\-`)) {
				t.Errorf("%s --%s missing", cmd.name, f.name)
			}
		}
	}
	if strings.Contains(page, ".SS \"man") {
		t.Error("the hidden man command has a section")
	}
	if _, err := exec.LookPath("groff"); err == nil {
		cmd := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z")
		cmd.Stdin = strings.NewReader(page)
		if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
			t.Errorf("groff warnings: %v\n%s", err, out)
		}
	}
}
