package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/usltun/usltun/testenv"
	"golang.org/x/net/dns/dnsmessage"
)

// The no-root lab: A's daemon runs as an ordinary user with no --route,
// serving --socks and --http-proxy; B's runs as root and exports everything
// IPv4 (which must still not reach B itself), B's own 127.0.0.1 by a host
// prefix, and C's IPv6 subnet. Names are resolved by a DNS server on C that
// only B uses (B's daemon sees its own /etc/resolv.conf, bind-mounted in a
// mount namespace of its own): A cannot resolve them.
const (
	socksAddr    = "127.0.0.1:1080"
	httpProxy    = "127.0.0.1:8080"
	bulkName     = "bulk.lab"    // C, by a name only B resolves
	loopName     = "loop.lab"    // B's loopback, not named by an export
	missingName  = "missing.lab" // NXDOMAIN
	bLoopAllowed = "127.0.0.1:7070"
	unexported6  = "[fd97::1]:80"
	bDirectEcho  = addrB4 + ":7071" // reached from A's own network, outside the tunnel
)

// tunAccessible gives /dev/net/tun the mode Debian and Fedora give it, for
// the test, and puts the old mode back after.
func tunAccessible(t *testing.T) {
	t.Helper()
	fi, err := os.Stat("/dev/net/tun")
	if err != nil {
		t.Skipf("no /dev/net/tun: %v", err)
	}
	old := fi.Mode().Perm()
	if old&0o006 == 0o006 {
		return
	}
	if err := os.Chmod("/dev/net/tun", 0o666); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod("/dev/net/tun", old) })
}

// testUser is an unprivileged user created for one test.
type testUser struct {
	name     string
	uid, gid int
	home     string // private to the user: keys, downloads, $XDG_RUNTIME_DIR
}

// newTestUser creates a system user with no login and removes it, and its
// files, when the test ends.
func newTestUser(t *testing.T, label string) *testUser {
	t.Helper()
	name := fmt.Sprintf("ut%d%s", os.Getpid()%100000, label)
	home, err := os.MkdirTemp("", "usltun-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	// A shell, so that sshd in the lab can run commands as the user.
	if out, err := exec.Command("useradd", "--system", "--no-create-home", "--home-dir", home, "--shell", "/bin/sh", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("userdel", name).CombinedOutput(); err != nil {
			t.Errorf("userdel %s: %v: %s", name, err, out)
		}
	})
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	tu := &testUser{name: name, home: home}
	tu.uid, _ = strconv.Atoi(u.Uid)
	tu.gid, _ = strconv.Atoi(u.Gid)
	for _, d := range []string{tu.home, tu.runtimeDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, tu.uid, tu.gid); err != nil {
			t.Fatal(err)
		}
	}
	return tu
}

func (u *testUser) runtimeDir() string { return filepath.Join(u.home, "run") }

// env is the user's login-like environment.
func (u *testUser) env() []string {
	return []string{"HOME=" + u.home, "XDG_RUNTIME_DIR=" + u.runtimeDir(), "USER=" + u.name, "LOGNAME=" + u.name, "TERM=xterm"}
}

// argv runs argv as the user, with no supplementary groups.
func (u *testUser) argv(argv ...string) []string {
	return append([]string{"setpriv", "--reuid=" + strconv.Itoa(u.uid), "--regid=" + strconv.Itoa(u.gid), "--clear-groups", "--"}, argv...)
}

// give copies a root-owned file into the user's home, mode 0600.
func (u *testUser) give(t *testing.T, src string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(u.home, filepath.Base(src))
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dst, u.uid, u.gid); err != nil {
		t.Fatal(err)
	}
	return dst
}

// run runs argv as the user inside h, with a bound.
func (u *testUser) run(h *testenv.Host, timeout time.Duration, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "env", append(u.env(), u.argv(argv...)...)...)
	cmd.WaitDelay = 2 * time.Second
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	err := h.Do(cmd.Run)
	return out.String(), err
}

// noRootLab is A—B—C with A's daemon as an unprivileged user.
type noRootLab struct {
	*e2eLab
	user *testUser
	blob *blobServer
}

func newNoRootLab(t *testing.T) *noRootLab {
	t.Helper()
	requireE2E(t)
	l := &noRootLab{e2eLab: newHosts(t, false)}
	l.user = newTestUser(t, "a")

	// The lab's resolver, on C; only B's daemon is told about it.
	pc, err := l.C.ListenPacket("udp", net.JoinHostPort(addrC4, "53"))
	if err != nil {
		t.Fatal(err)
	}
	dns := testenv.ServeDNS(pc, map[string][]netip.Addr{
		bulkName: {netip.MustParseAddr(addrC4), netip.MustParseAddr(addrC6)},
		loopName: {netip.MustParseAddr("127.0.0.2")},
	})
	t.Cleanup(func() { dns.Close() })
	resolv := filepath.Join(l.dir, "resolv.conf")
	os.WriteFile(resolv, []byte("nameserver "+addrC4+"\noptions timeout:1 attempts:2\n"), 0o644)

	l.blob = startBlobServer(t, l.C, net.JoinHostPort(addrC4, strconv.Itoa(httpPort)))
	startUDPEcho(t, l.C, net.JoinHostPort(addrC4, strconv.Itoa(udpPort)))
	startEcho(t, l.B, bLoopAllowed)
	startEcho(t, l.C, net.JoinHostPort(addrC6, strconv.Itoa(echoPort)))
	startEcho(t, l.C, net.JoinHostPort(addrC4, strconv.Itoa(echoPort)))
	startEcho(t, l.B, bDirectEcho)
	tunAccessible(t)

	l.DB = l.B.Start(t, "usltun", "unshare", "--mount", "--propagation", "private", "--",
		"sh", "-c", `mount --bind "$0" /etc/resolv.conf && exec "$@"`, resolv,
		e2eBinary, "up", "--listen", addrB4, "--key", l.bKey, "--peer-key", l.aPub,
		"--export", "0.0.0.0/0", "--export", "127.0.0.1/32", "--export", netC6, "--export-dns", "--log-level", "debug")
	l.DA = l.A.StartEnv(t, "usltun", l.user.env(), l.user.argv(e2eBinary, "up",
		"--peer", addrB4, "--key", l.user.give(t, l.aKey), "--peer-key", l.bPub,
		"--socks", socksAddr, "--http-proxy", httpProxy)...)
	t.Cleanup(l.dumpOnFailure)
	l.waitUserUp(upTimeout)
	return l
}

// waitUserUp polls the user's own `usltun status` until the session is up.
func (l *noRootLab) waitUserUp(timeout time.Duration) {
	l.t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		r, err := l.userStatusJSON()
		if err == nil && r.Session != nil && r.Session.State == "up" {
			return
		}
		last = fmt.Sprintf("%v %+v", err, r)
		time.Sleep(100 * time.Millisecond)
	}
	l.t.Fatalf("the user's daemon on A is not up within %v: %s", timeout, last)
}

// socksConnect runs a SOCKS5 CONNECT from A and returns the reply code and
// the connection (nil unless the code is 0).
func socksConnect(ctx context.Context, h *testenv.Host, cmd byte, addr []byte) (byte, netip.AddrPort, net.Conn, error) {
	c, err := h.DialContext(ctx, "tcp", socksAddr)
	if err != nil {
		return 0, netip.AddrPort{}, nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	fail := func(err error) (byte, netip.AddrPort, net.Conn, error) {
		c.Close()
		return 0, netip.AddrPort{}, nil, err
	}
	if _, err := c.Write([]byte{5, 1, 0}); err != nil {
		return fail(err)
	}
	var sel [2]byte
	if _, err := io.ReadFull(c, sel[:]); err != nil || sel != [2]byte{5, 0} {
		return fail(fmt.Errorf("method selection %x: %v", sel, err))
	}
	if _, err := c.Write(append([]byte{5, cmd, 0}, addr...)); err != nil {
		return fail(err)
	}
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return fail(fmt.Errorf("reply: %w", err))
	}
	n := map[byte]int{1: 4, 4: 16}[hdr[3]]
	if n == 0 {
		return fail(fmt.Errorf("reply address type %d", hdr[3]))
	}
	rest := make([]byte, n+2)
	if _, err := io.ReadFull(c, rest); err != nil {
		return fail(err)
	}
	ip, _ := netip.AddrFromSlice(rest[:n])
	bnd := netip.AddrPortFrom(ip, binary.BigEndian.Uint16(rest[n:]))
	if hdr[1] != 0 {
		c.Close()
		return hdr[1], bnd, nil, nil
	}
	c.SetDeadline(time.Time{})
	return 0, bnd, c, nil
}

// socksAddrBytes is ATYP ADDR PORT for host:port (a name or a literal).
func socksAddrBytes(hostport string) []byte {
	host, portStr, _ := net.SplitHostPort(hostport)
	port, _ := strconv.Atoi(portStr)
	var b []byte
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Is4() {
			b = append([]byte{1}, ip.AsSlice()...)
		} else {
			b = append([]byte{4}, ip.AsSlice()...)
		}
	} else {
		b = append([]byte{3, byte(len(host))}, host...)
	}
	return binary.BigEndian.AppendUint16(b, uint16(port))
}

// TestE2ENoRoot is issue 10's SOCKS5 and HTTP proxy rows and issue 8's
// gateway and control socket rows, on one lab. The fault subtest runs last.
func TestE2ENoRoot(t *testing.T) {
	l := newNoRootLab(t)

	t.Run("user daemon's control socket is private", func(t *testing.T) {
		sock := filepath.Join(l.user.runtimeDir(), "usltun", "usl0.sock")
		for p, want := range map[string]os.FileMode{filepath.Dir(sock): 0o700, sock: 0o600} {
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if fi.Mode().Perm() != want || int(st.Uid) != l.user.uid {
				t.Errorf("%s: mode %04o uid %d, want %04o uid %d", p, fi.Mode().Perm(), st.Uid, want, l.user.uid)
			}
		}
	})

	t.Run("control socket refuses another user", func(t *testing.T) {
		// Root's daemon on B: root is served, the user is not.
		if _, err := l.status(l.B); err != nil {
			t.Fatalf("root's status: %v", err)
		}
		out, err := l.user.run(l.B, 5*time.Second, e2eBinary, "status", "--control", "@usltun/usl0")
		if err == nil || !strings.Contains(out, "permission denied") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
			t.Errorf("user's status against root's daemon: %v: %q, want one line with permission denied", err, out)
		}
	})

	t.Run("connect by a name only B resolves", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		code, _, c, err := socksConnect(ctx, l.A, 1, socksAddrBytes(net.JoinHostPort(bulkName, strconv.Itoa(httpPort))))
		if err != nil || code != 0 {
			t.Fatalf("CONNECT %s: reply %#x, %v", bulkName, code, err)
		}
		c.Close()
		if _, err := l.A.Run("getent", "hosts", bulkName); err == nil {
			t.Errorf("A resolves %s itself: the test would not show resolution on B", bulkName)
		}
	})

	t.Run("outcomes", func(t *testing.T) {
		cases := []struct {
			dst  string
			want byte
		}{
			{net.JoinHostPort(addrC4, strconv.Itoa(closedPort)), 0x05}, // refused
			{unexported6, 0x02},    // not exported
			{"127.0.0.2:80", 0x02}, // B's loopback, 0.0.0.0/0 does not name it
			{net.JoinHostPort(addrB4, strconv.Itoa(sessionPort)), 0x02},  // B's own address
			{net.JoinHostPort(addrBC4, strconv.Itoa(sessionPort)), 0x02}, // B's address on C's side
			{loopName + ":80", 0x02},                                     // a name resolving only to loopback
			{missingName + ":80", 0x04},                                  // NXDOMAIN
			{bLoopAllowed, 0x00},                                         // named by --export 127.0.0.1/32
			{net.JoinHostPort(bulkName, strconv.Itoa(closedPort)), 0x05}, // by name, refused
			{"[" + addrC6 + "]:" + strconv.Itoa(echoPort), 0x00},         // IPv6 literal
			{"[" + addrC6 + "]:" + strconv.Itoa(closedPort), 0x05},       // IPv6 refused
		}
		forbiddenBefore := forbiddenLogged(l.DB.Output())
		for _, c := range cases {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			code, _, conn, err := socksConnect(ctx, l.A, 1, socksAddrBytes(c.dst))
			cancel()
			if err != nil || code != c.want {
				t.Errorf("CONNECT %s: reply %#x, %v; want %#x", c.dst, code, err, c.want)
			}
			if conn != nil {
				conn.Close()
			}
		}
		// B refused them: A's proxy saw B's reset (forbidden, remote). B
		// logs refusals aggregated, at most a line a second with a count
		// (internal/ratelog), so its lines count every one of them.
		forbidden := 0
		for _, c := range cases {
			if c.want == 0x02 {
				forbidden++
			}
		}
		for _, dst := range []string{"tcp/127.0.0.2:80", "tcp/" + addrB4 + ":7400", "tcp/" + loopName + ":80"} {
			if !strings.Contains(l.DA.Output(), "dst="+dst+` reply=2 err="flow forbidden: usl: stream reset (forbidden, remote)"`) {
				t.Errorf("A's log does not show B's forbidden reset for %s", dst)
			}
		}
		eventually(5*time.Second, func() bool { return forbiddenLogged(l.DB.Output())-forbiddenBefore >= forbidden })
		if n := forbiddenLogged(l.DB.Output()) - forbiddenBefore; n < forbidden {
			t.Errorf("B's log counts %d forbidden flows, want %d", n, forbidden)
		}
		// curl's own view of the outcomes, as the user.
		for _, c := range []struct {
			args []string
			want string
		}{
			{[]string{"--socks5-hostname", socksAddr, "http://" + addrC4 + ":" + strconv.Itoa(closedPort) + "/"}, "Can't complete SOCKS5 connection to 10.98.0.2. (5)"}, // curl 7.88's words for reply 5, refused
			{[]string{"--socks5-hostname", socksAddr, "http://[fd97::1]/"}, "Can't complete SOCKS5 connection to fd97::1. (2)"},                                         // reply 2, not allowed
			{[]string{"-p", "-x", "http://" + httpProxy, "http://" + addrC4 + ":" + strconv.Itoa(closedPort) + "/"}, "CONNECT tunnel failed, response 502"},
			{[]string{"-p", "-x", "http://" + httpProxy, "http://[fd97::1]/"}, "CONNECT tunnel failed, response 403"},
			{[]string{"-x", "http://" + httpProxy, "http://127.0.0.2/"}, "403"},
		} {
			out, err := l.user.run(l.A, 20*time.Second, append([]string{"curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"}, c.args...)...)
			if !strings.Contains(out, c.want) {
				t.Errorf("curl %v: %v: %q, want %q", c.args, err, out, c.want)
			}
		}
	})

	t.Run("UDP associate: DNS and a 1 MiB echo", func(t *testing.T) {
		socksUDP(t, l)
	})

	t.Run("garbage client", func(t *testing.T) {
		for _, junk := range []string{"GET / HTTP/1.0\r\n\r\n", "\x05\x01\x00\x09\x01\x00\x01", "\x04\x01\x00\x50\x0a\x62\x00\x02\x00"} {
			c, err := l.A.Dial("tcp", socksAddr)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(15 * time.Second))
			c.Write([]byte(junk))
			io.Copy(io.Discard, c) // closed by the server
			c.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if code, _, c, err := socksConnect(ctx, l.A, 1, socksAddrBytes(bLoopAllowed)); err != nil || code != 0 {
			t.Fatalf("after garbage: reply %#x, %v", code, err)
		} else {
			c.Close()
		}
	})

	t.Run("exec", func(t *testing.T) { execScenarios(t, l) })

	t.Run("download through SOCKS, HTTP CONNECT and exec across resets and a blackhole", func(t *testing.T) {
		downloadUnderFaults(t, l)
	})

	t.Run("exec: interactive ssh across resets and a blackhole", func(t *testing.T) {
		execSSH(t, l)
	})
}

// socksUDP resolves a name with the lab's DNS server through an
// association, then echoes 1 MiB off C.
func socksUDP(t *testing.T, l *noRootLab) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code, relay, ctl, err := socksConnect(ctx, l.A, 3, socksAddrBytes("0.0.0.0:0"))
	if err != nil || code != 0 {
		t.Fatalf("UDP ASSOCIATE: reply %#x, %v", code, err)
	}
	defer ctl.Close()
	pc, err := l.A.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	relayAddr := net.UDPAddrFromAddrPort(relay)
	exchange := func(dst string, payload []byte, check func([]byte) bool) error {
		hdr := append([]byte{0, 0, 0}, socksAddrBytes(dst)...)
		buf := make([]byte, 65536)
		for try := 0; try < 10; try++ {
			pc.WriteTo(append(hdr, payload...), relayAddr)
			pc.SetReadDeadline(time.Now().Add(time.Second))
			for {
				n, _, err := pc.ReadFrom(buf)
				if err != nil {
					break // timeout: send again
				}
				if n >= len(hdr) && string(buf[:len(hdr)]) == string(hdr) && check(buf[len(hdr):n]) {
					return nil
				}
			}
		}
		return fmt.Errorf("no answer from %s after 10 tries", dst)
	}

	q := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x7501, RecursionDesired: true})
	q.StartQuestions()
	q.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(bulkName + "."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	query, _ := q.Finish()
	var answer netip.Addr
	err = exchange(net.JoinHostPort(addrC4, "53"), query, func(b []byte) bool {
		var m dnsmessage.Message
		if m.Unpack(b) != nil || m.ID != 0x7501 || len(m.Answers) != 1 {
			return false
		}
		if a, ok := m.Answers[0].Body.(*dnsmessage.AResource); ok {
			answer = netip.AddrFrom4(a.A)
		}
		return true
	})
	if err != nil || answer != netip.MustParseAddr(addrC4) {
		t.Fatalf("DNS query for %s through the association: %v, answer %v", bulkName, err, answer)
	}

	// 1 MiB in 1 KiB datagrams, each with its sequence number, echoed by C
	// as "echo:" + datagram; every one must come back intact.
	const chunk, total = 1024, 1 << 20
	echoDst := net.JoinHostPort(addrC4, strconv.Itoa(udpPort))
	start := time.Now()
	for seq := 0; seq < total/chunk; seq++ {
		msg := make([]byte, chunk)
		binary.BigEndian.PutUint32(msg, uint32(seq))
		for i := 4; i < chunk; i++ {
			msg[i] = byte(seq + i)
		}
		want := append([]byte("echo:"), msg...)
		if err := exchange(echoDst, msg, func(b []byte) bool { return string(b) == string(want) }); err != nil {
			t.Fatalf("datagram %d: %v", seq, err)
		}
	}
	t.Logf("1 MiB UDP echo through SOCKS in %v", time.Since(start))
}

// downloadUnderFaults fetches the blob by name through both proxies at
// once, as the user with curl, across 5 TCP resets and a 5 s blackhole of
// the A—B session.
func downloadUnderFaults(t *testing.T, l *noRootLab) {
	url := "http://" + bulkName + ":" + strconv.Itoa(httpPort) + "/blob"
	outs := map[string][]string{
		"socks5h":      {"--socks5-hostname", socksAddr},
		"http-connect": {"-p", "-x", "http://" + httpProxy},
		"exec":         nil, // the whole curl inside usltun exec
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(outs))
	for name, args := range outs {
		file := filepath.Join(l.user.home, name+".bin")
		wg.Add(1)
		go func() {
			defer wg.Done()
			argv := append([]string{"curl", "-sS", "--fail", "--max-time", "90", "--limit-rate", "6M", "-o", file}, args...)
			if name == "exec" {
				argv = append([]string{e2eBinary, "exec", "--"}, argv...)
			}
			if out, err := l.user.run(l.A, 100*time.Second, append(argv, url)...); err != nil {
				errs <- fmt.Errorf("%s: curl: %v: %s", name, err, out)
				return
			}
			b, err := os.ReadFile(file)
			if err != nil {
				errs <- err
				return
			}
			sum := sha256.Sum256(b)
			if got := hex.EncodeToString(sum[:]); got != l.blob.sum {
				errs <- fmt.Errorf("%s: %d bytes, SHA-256 %s, want %d bytes %s", name, len(b), got, len(l.blob.blob), l.blob.sum)
			}
		}()
	}
	time.Sleep(time.Second)
	l.faults(5, 5*time.Second)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	r, err := l.userStatusJSON()
	if err != nil {
		t.Fatal(err)
	}
	// Resets that land while a reconnect is under way merge into one.
	if r.Session == nil || r.Session.Reconnects < 3 {
		t.Errorf("session %+v: want at least 3 reconnects, or the faults did not hit the session", r.Session)
	}
	t.Logf("%d reconnects of the session during the downloads", r.Session.Reconnects)
}

// faults resets the A—B session resets times, 300 ms each a second apart,
// then blackholes A—B for blackhole.
func (l *noRootLab) faults(resets int, blackhole time.Duration) {
	for i := 0; i < resets; i++ {
		l.AB.ResetTCP(sessionPort)
		time.Sleep(300 * time.Millisecond)
		l.AB.Heal()
		time.Sleep(700 * time.Millisecond)
	}
	l.AB.Blackhole()
	time.Sleep(blackhole)
	l.AB.Heal()
}

func (l *noRootLab) userStatusJSON() (*statusReport, error) {
	out, err := l.user.run(l.A, 5*time.Second, e2eBinary, "status", "--json")
	if err != nil {
		return nil, fmt.Errorf("status: %v: %s", err, out)
	}
	var r statusReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// TestE2EControlSquat is issue 8's squatting row: a user binds the root
// daemon's control name first, in a host of its own.
func TestE2EControlSquat(t *testing.T) {
	requireE2E(t)
	d := testenv.NewHost(t, "d")
	l := &e2eLab{t: t, dir: t.TempDir()}
	key, _ := l.genKey("d")
	_, pub := l.genKey("peer")
	u := newTestUser(t, "s")
	squatter := d.StartEnv(t, "squatter", u.env(), u.argv(e2eBinary, "up", "--listen", "127.0.0.1:7499",
		"--key", u.give(t, key), "--peer-key", pub, "--control", "@usltun/usl0")...)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if out, err := u.run(d, 3*time.Second, e2eBinary, "status", "--control", "@usltun/usl0"); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("squatter not listening: %v: %s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := d.RunContext(ctx, e2eBinary, "up", "--listen", "127.0.0.1:7498", "--key", key, "--peer-key", pub)
	wantHolder := fmt.Sprintf("uid %d, pid %d", u.uid, squatter.Pid())
	t.Logf("root's up: %s", out)
	if err == nil || !strings.Contains(out, "held by another user's process ("+wantHolder+")") {
		t.Errorf("root's up with the name taken: %v: %q, want it to name %s", err, out, wantHolder)
	}
	out, err = d.RunContext(ctx, e2eBinary, "status")
	if err == nil || !strings.Contains(out, "served by uid "+strconv.Itoa(u.uid)) || !strings.Contains(out, "not trusting") {
		t.Errorf("root's status against the squatter: %v: %q", err, out)
	}
}

// TestE2EProxyBadInput: each mistake gets one line and a non-zero exit.
func TestE2EProxyBadInput(t *testing.T) {
	requireE2E(t)
	h := testenv.NewHost(t, "x")
	l := &e2eLab{t: t, dir: t.TempDir()}
	key, _ := l.genKey("x")
	_, pub := l.genKey("peer")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--socks", "0.0.0.0:1080"}, "without authentication"},
		{[]string{"--http-proxy", "0.0.0.0:8080"}, "without authentication"},
		{[]string{"--route", "10.98.0.0/24", "--export", "10.98.0.0/16"}, "overlaps --route"},
		{[]string{"--socks", "127.0.0.1:1080", "--proxy-auth", "/nonexistent"}, "password file"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := h.RunContext(ctx, append([]string{e2eBinary, "up", "--peer", "127.0.0.1:9", "--key", key, "--peer-key", pub}, c.args...)...)
		cancel()
		// The CLI's format of errors (one line, a --help hint for usage
		// errors) is tested with the CLI; here: the reason, and failure.
		var ee *exec.ExitError
		if !errors.As(err, &ee) || !strings.Contains(out, c.want) {
			t.Errorf("up %v: %v: %q, want a non-zero exit saying %q", c.args, err, out, c.want)
		}
	}
}

// forbiddenLogged adds up the counts of a gateway's aggregated
// "forbidden" lines in log.
func forbiddenLogged(log string) int {
	n := 0
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, `msg="forbidden: destination is not exported"`) {
			continue
		}
		_, rest, ok := strings.Cut(line, " count=")
		if !ok {
			continue
		}
		v, _, _ := strings.Cut(rest, " ")
		if c, err := strconv.Atoi(v); err == nil {
			n += c
		}
	}
	return n
}
