package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// staticProbe is a program built in the test with CGO_ENABLED=0: a static
// Go binary, whose raw syscalls and own DNS resolver an LD_PRELOAD library
// would never see. For each host:port argument it sends its name, half-
// closes, and prints "host:port reply" or "host:port error".
const staticProbe = `package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

func main() {
	for _, a := range os.Args[1:] {
		c, err := net.DialTimeout("tcp", a, 10*time.Second)
		if err != nil {
			fmt.Println(a, "error", err)
			continue
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte("static:" + a))
		c.(*net.TCPConn).CloseWrite()
		b, err := io.ReadAll(c)
		c.Close()
		if err != nil {
			fmt.Println(a, "error", err)
			continue
		}
		fmt.Println(a, string(b))
	}
}
`

func buildStaticProbe(t *testing.T, u *testUser) string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "main.go"), []byte(staticProbe), 0o644)
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module probe\n\ngo 1.22\n"), 0o644)
	bin := filepath.Join(u.home, "probe")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = dir
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the static probe: %v: %s", err, out)
	}
	if out, _ := exec.Command("file", bin).CombinedOutput(); len(out) > 0 && !strings.Contains(string(out), "statically linked") {
		t.Fatalf("probe is not static: %s", out)
	}
	os.Chmod(bin, 0o755)
	return bin
}

// userProcs lists the pids of processes running as uid.
func userProcs(uid int) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" && f[1] == strconv.Itoa(uid) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// execScenarios is issue 10's exec rows that need no faults; the download
// by name across faults runs with the proxies' downloads.
func execScenarios(t *testing.T, l *noRootLab) {
	u := l.user
	run := func(timeout time.Duration, argv ...string) (string, error) {
		return u.run(l.A, timeout, append([]string{e2eBinary, "exec"}, argv...)...)
	}
	fdsBefore, err := daemonFDs(l.DA)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("exit status, no capabilities, only lo and the device", func(t *testing.T) {
		out, err := run(20*time.Second, "--", "sh", "-c", "grep CapEff /proc/self/status; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort; id -u; exit 7")
		var ee *exec.ExitError
		if !errorsAs(err, &ee) || ee.ExitCode() != 7 {
			t.Fatalf("exit: %v (want status 7): %s", err, out)
		}
		if !strings.Contains(out, "CapEff:\t0000000000000000") {
			t.Errorf("the command holds capabilities: %s", out)
		}
		if f := strings.Fields(out); len(f) < 5 || f[2] != "lo" || f[3] != "usl0" || f[4] != strconv.Itoa(u.uid) {
			t.Errorf("interfaces and uid: %q, want lo usl0 and uid %d", out, u.uid)
		}
	})

	// Without a terminal exec passes SIGTERM and SIGINT on (with one, the
	// terminal delivers SIGINT to the command's process group itself).
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String()+" reaches the command", func(t *testing.T) {
			name := strings.TrimPrefix(unix.SignalName(sig), "SIG")
			ready := filepath.Join(u.home, "trap-ready-"+name)
			p := l.A.StartEnv(t, "exec-trap", u.env(), u.argv(e2eBinary, "exec", "--", "sh", "-c",
				`trap 'echo got-`+name+`; exit 3' `+name+`; touch `+ready+`; while :; do sleep 0.1; done`)...)
			deadline := time.Now().Add(10 * time.Second)
			for _, err := os.Stat(ready); err != nil; _, err = os.Stat(ready) {
				if time.Now().After(deadline) {
					t.Fatalf("the command did not start: %s", p.Output())
				}
				time.Sleep(50 * time.Millisecond)
			}
			syscall.Kill(p.Pid(), sig)
			err := p.Wait(10 * time.Second)
			var ee *exec.ExitError
			if !errorsAs(err, &ee) || ee.ExitCode() != 3 || !strings.Contains(p.Output(), "got-"+name) {
				t.Errorf("after %v to usltun exec: %v, output %q; want the trap's exit 3", sig, err, p.Output())
			}
		})
	}

	probe := buildStaticProbe(t, u)
	echoC := net.JoinHostPort(addrC4, strconv.Itoa(echoPort))
	t.Run("a static Go binary, by name and by address", func(t *testing.T) {
		byName := net.JoinHostPort(bulkName, strconv.Itoa(echoPort))
		out, err := run(30*time.Second, "--", probe, byName, echoC)
		if err != nil || !strings.Contains(out, byName+" static:"+byName) || !strings.Contains(out, echoC+" static:"+echoC) {
			t.Fatalf("probe through exec: %v: %s", err, out)
		}
	})

	t.Run("route split", func(t *testing.T) {
		before := strings.Count(l.DB.Output(), "dst=tcp/"+bDirectEcho)
		throughBefore := strings.Count(l.DB.Output(), `msg="flow open" component=gateway`)
		out, err := run(30*time.Second, "--route", netC4, "--", probe, echoC, bDirectEcho)
		if err != nil || !strings.Contains(out, echoC+" static:"+echoC) || !strings.Contains(out, bDirectEcho+" static:"+bDirectEcho) {
			t.Fatalf("probe with --route %s: %v: %s", netC4, err, out)
		}
		logB := l.DB.Output()
		if strings.Count(logB, `msg="flow open" component=gateway`) != throughBefore+1 || !strings.Contains(logB, "dst=tcp/"+echoC) {
			t.Errorf("B's log does not show exactly one new flow, to %s: it did not go through the session", echoC)
		}
		if strings.Count(logB, "dst=tcp/"+bDirectEcho) != before {
			t.Errorf("B's log names %s: it went through the session, not directly", bDirectEcho)
		}
		// Without --route the same destination goes through the session,
		// where it is B's own address: forbidden.
		out, _ = run(30*time.Second, "--", probe, bDirectEcho)
		// B logs refusals aggregated (internal/ratelog): the line naming the
		// most recent one may come up to a second later.
		refusedByB := eventually(5*time.Second, func() bool { return strings.Contains(l.DB.Output(), "dst=tcp/"+bDirectEcho) })
		if !strings.Contains(out, bDirectEcho+" error") || !refusedByB {
			t.Errorf("without --route: %s; want the flow refused by B", out)
		}
	})

	t.Run("nothing remains", func(t *testing.T) {
		deadline := time.Now().Add(5 * time.Second)
		for {
			pids := userProcs(u.uid)
			fds, _ := daemonFDs(l.DA)
			st, err := l.userStatusJSON()
			if err != nil {
				t.Fatal(err)
			}
			if len(pids) == 1 && pids[0] == l.DA.Pid() && fds <= fdsBefore && st.Execs == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("after the commands: processes of the user %v (daemon %d), daemon fds %d (before %d), %d exec namespaces attached", pids, l.DA.Pid(), fds, fdsBefore, st.Execs)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		for _, c := range []struct {
			what string
			argv []string
			want string
		}{
			{"no daemon", []string{e2eBinary, "exec", "--control", filepath.Join(u.home, "nothing.sock"), "--", "true"}, "no usltun daemon for this user: start one with `usltun up ...`"},
			{"no command", []string{e2eBinary, "exec"}, "give the command to run after --"},
			{"user namespaces disabled", []string{"unshare", "--user", "--map-root-user", "sh", "-c",
				`echo 0 > /proc/sys/user/max_user_namespaces && exec "$0" exec -- true`, e2eBinary}, "sysctl user.max_user_namespaces = 0"},
		} {
			out, err := u.run(l.A, 20*time.Second, c.argv...)
			t.Logf("%s: %s", c.what, strings.TrimSpace(out))
			if err == nil || !strings.Contains(out, c.want) {
				t.Errorf("%s: %v: %q, want a non-zero exit saying %q", c.what, err, out, c.want)
			}
		}
		// /dev/net/tun closed to the user.
		if err := os.Chmod("/dev/net/tun", 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := run(20*time.Second, "--", "true")
		os.Chmod("/dev/net/tun", 0o666)
		if err == nil || !strings.Contains(out, "chmod 0666 /dev/net/tun") {
			t.Errorf("tun not accessible: %v: %q", err, out)
		}
	})

}

func errorsAs(err error, target **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*target = e
	}
	return ok
}
