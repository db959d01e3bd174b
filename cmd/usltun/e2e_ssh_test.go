package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sshLines is how many lines the remote command prints, one every 0.5 s:
// long enough to span 3 resets and a 10 s blackhole.
const sshLines = 44

// startSSHD runs OpenSSH's sshd on C, for u's key only, and returns u's
// private key file.
func startSSHD(t *testing.T, l *noRootLab) string {
	t.Helper()
	if _, err := exec.LookPath("sshd"); err != nil {
		t.Skip("sshd not installed: make deps installs openssh-server")
	}
	u := l.user
	// useradd leaves the account locked ("!"), which sshd without PAM
	// refuses even for a key; "*" is no password, not locked.
	if out, err := exec.Command("usermod", "-p", "*", u.name).CombinedOutput(); err != nil {
		t.Fatalf("usermod: %v: %s", err, out)
	}
	dir := t.TempDir()
	hostKey := filepath.Join(dir, "host_ed25519")
	userKey := filepath.Join(u.home, "id_ed25519")
	for _, k := range []string{hostKey, userKey} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v: %s", err, out)
		}
	}
	os.Chown(userKey, u.uid, u.gid)
	pub, _ := os.ReadFile(userKey + ".pub")
	auth := filepath.Join(u.home, "authorized_keys") // sshd reads it as the user
	os.WriteFile(auth, pub, 0o644)
	os.Chown(auth, u.uid, u.gid)
	// sshd insists on its privilege separation directory.
	if _, err := os.Stat("/run/sshd"); os.IsNotExist(err) {
		os.Mkdir("/run/sshd", 0o755)
		t.Cleanup(func() { os.Remove("/run/sshd") })
	}
	cfg := filepath.Join(dir, "sshd_config")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`ListenAddress %s:22
HostKey %s
AuthorizedKeysFile %s
PidFile none
UsePAM no
StrictModes no
UseDNS no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AllowUsers %s
LogLevel VERBOSE
`, addrC4, hostKey, auth, u.name)), 0o644)
	l.C.Start(t, "sshd", "/usr/sbin/sshd", "-D", "-e", "-f", cfg)
	if err := l.C.WaitDial("tcp", addrC4+":22", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return userKey
}

// execSSH is issue 10's interactive row: in a tmux terminal, the user types
// `usltun exec -- ssh` to C by name; the remote command prints a line every
// 0.5 s while A—B gets 3 TCP resets and a 10 s blackhole. Every line must
// arrive, in order, and ssh must exit 0.
func execSSH(t *testing.T, l *noRootLab) {
	key := startSSHD(t, l)
	u := l.user
	sock := filepath.Join(u.runtimeDir(), "tmux.sock")
	out := filepath.Join(u.home, "ssh.out")
	tmux := func(args ...string) (string, error) {
		return u.run(l.A, 10*time.Second, append([]string{"tmux", "-S", sock}, args...)...)
	}
	if o, err := tmux("new-session", "-d", "-s", "ssh", "-x", "160", "-y", "50", "sh"); err != nil {
		t.Fatalf("tmux: %v: %s", err, o)
	}
	t.Cleanup(func() { tmux("kill-server") })
	if o, err := tmux("pipe-pane", "-t", "ssh", "-o", "cat >> "+out); err != nil {
		t.Fatalf("tmux pipe-pane: %v: %s", err, o)
	}
	remote := fmt.Sprintf("for i in $(seq 1 %d); do echo line-$i; sleep 0.5; done", sshLines)
	typed := strings.Join([]string{e2eBinary, "exec", "--", "ssh", "-tt", "-F", "/dev/null", "-i", key,
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
		u.name + "@" + bulkName, "'" + remote + "'", ";", "echo", "ssh-exit=$?"}, " ")
	if o, err := tmux("send-keys", "-t", "ssh", typed, "Enter"); err != nil {
		t.Fatalf("tmux send-keys: %v: %s", err, o)
	}
	wait := func(what string, re *regexp.Regexp, limit time.Duration) string {
		deadline := time.Now().Add(limit)
		for {
			b, _ := os.ReadFile(out)
			if re.Match(b) {
				return string(b)
			}
			if time.Now().After(deadline) {
				pane, _ := tmux("capture-pane", "-p", "-t", "ssh")
				t.Fatalf("%s: not seen within %v; pane:\n%s", what, limit, pane)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	wait("the second line", regexp.MustCompile(`line-2\b`), 20*time.Second)
	before, err := l.userStatusJSON()
	if err != nil {
		t.Fatal(err)
	}
	if before.Execs != 1 || before.Socks != socksAddr || before.HTTPProxy != httpProxy {
		t.Errorf("status during exec: %d exec namespaces, socks %q, http proxy %q; want 1, %s, %s", before.Execs, before.Socks, before.HTTPProxy, socksAddr, httpProxy)
	}
	l.faults(3, 10*time.Second)
	got := wait("ssh's exit", regexp.MustCompile(`ssh-exit=\d+`), time.Duration(sshLines)*time.Second)
	var seen []int
	for _, m := range regexp.MustCompile(`line-(\d+)`).FindAllStringSubmatch(got, -1) {
		n, _ := strconv.Atoi(m[1])
		seen = append(seen, n)
	}
	// The typed command line itself is echoed by the terminal, and holds
	// "line-$i", not a number: only the remote's lines match.
	ok := len(seen) == sshLines
	for i := 0; ok && i < sshLines; i++ {
		ok = seen[i] == i+1
	}
	if !ok {
		t.Errorf("lines %v, want 1..%d in order", seen, sshLines)
	}
	if !strings.Contains(got, "ssh-exit=0") {
		t.Errorf("ssh did not exit 0: %s", tail(got, 5))
	}
	after, err := l.userStatusJSON()
	if err != nil {
		t.Fatal(err)
	}
	if after.Session.Reconnects < before.Session.Reconnects+2 {
		t.Errorf("reconnects %d → %d: the faults did not hit the session", before.Session.Reconnects, after.Session.Reconnects)
	}
	t.Logf("%d lines in order, ssh exited 0, %d reconnects of the session meanwhile", len(seen), after.Session.Reconnects-before.Session.Reconnects)
}
