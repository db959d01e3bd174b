package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/usltun/usltun/testenv"
	"github.com/usltun/usltun/tools/loadgen"
)

// The demo's addresses. The B—C link carries two subnets: C's address in
// tunnelNet is reached through usltun (B exports it, A routes it into usl0),
// the one in plainNet through the kernel (A routes it via B), so both paths
// end at the same server and cross the same A—B link.
const (
	addrA       = "10.61.1.1/24"
	addrB       = "10.61.1.2/24"
	peerB       = "10.61.1.2" // where A's usltun dials B's
	addrsBC     = "10.61.2.1/24,10.61.3.1/24"
	addrsC      = "10.61.2.2/24,10.61.3.2/24"
	tunnelNet   = "10.61.2.0/24"
	plainNet    = "10.61.3.0/24"
	tunnelDst   = "10.61.2.2:9000"
	plainDst    = "10.61.3.2:9000"
	addrA2      = "10.61.4.1/24" // the second A—B link, used by the multipath act
	addrB2      = "10.61.4.2/24"
	peerB2      = "10.61.4.2"
	sessionPort = 7400 // usltun's default port, which B listens on
	appPort     = 9000
)

// world is the running lab: three hosts, two links, two daemons and the
// traffic server on C.
type world struct {
	lab    *testenv.Lab
	bin    string
	dir    string
	a, b   *testenv.Host
	c      *testenv.Host
	ab     *testenv.LinkPair
	ab2    *testenv.LinkPair        // idle until the multipath act
	usltun map[string]*testenv.Proc // by host label
	keys   struct{ a, pubA, b, pubB string }
	// onePathStall is the first act's longest stall, for the comparison.
	onePathStall time.Duration
	server       *loadgen.Server

	delivered atomic.Int64 // bytes C's application has read, both paths
}

// buildWorld creates the hosts and links and starts the traffic server. It
// reports failures through lab.Fatalf (a panic the caller recovers).
func buildWorld(lab *testenv.Lab, bin, dir string, log *slog.Logger) (*world, error) {
	w := &world{lab: lab, bin: bin, dir: dir, usltun: map[string]*testenv.Proc{}}
	w.a, w.b, w.c = testenv.NewHost(lab, "a"), testenv.NewHost(lab, "b"), testenv.NewHost(lab, "c")
	w.ab = testenv.Link(lab, w.a, w.b, addrA, addrB)
	w.ab2 = testenv.Link(lab, w.a, w.b, addrA2, addrB2)
	testenv.Link(lab, w.b, w.c, addrsBC, addrsC)
	w.b.EnableForwarding()
	w.a.AddRoute(plainNet, peerB)
	w.c.AddRoute("10.61.1.0/24", "10.61.3.1")

	ln, err := w.c.Listen("tcp", fmt.Sprintf(":%d", appPort))
	if err != nil {
		return nil, fmt.Errorf("listen on C: %w", err)
	}
	w.server = loadgen.NewServer(countingListener{ln, &w.delivered}, log)
	lab.Cleanup(func() { w.server.Close() })
	return w, nil
}

// startTunnel generates a key pair per host with the binary and starts B's
// daemon (listening, exporting C's subnet) and A's (dialing B, routing it),
// then waits until A reports the session up.
func (w *world) startTunnel(ctx context.Context) error {
	keyA, pubA, err := w.makeKey(ctx, "a")
	if err != nil {
		return err
	}
	keyB, pubB, err := w.makeKey(ctx, "b")
	if err != nil {
		return err
	}
	w.keys.a, w.keys.pubA, w.keys.b, w.keys.pubB = keyA, pubA, keyB, pubB
	w.usltun["b"] = w.b.Start(w.lab, "usltun", w.bin, "up",
		"--key", keyB, "--peer-key", pubA, "--listen", peerB, "--export", tunnelNet)
	w.usltun["a"] = w.a.Start(w.lab, "usltun", w.bin, "up",
		"--key", keyA, "--peer-key", pubB, "--peer", peerB, "--route", tunnelNet)
	// The session comes up before A's daemon has created usl0 and its
	// route; a connection through the tunnel is the proof that both work.
	_, err = w.waitSession(ctx, 15*time.Second, func(s *sessionStatus) bool { return s.State == "up" && s.Device != "" })
	if err != nil {
		return fmt.Errorf("the tunnel did not come up: %w", err)
	}
	if err := w.a.WaitDial("tcp", tunnelDst, 10*time.Second); err != nil {
		return fmt.Errorf("the tunnel is up but does not carry connections: %w", err)
	}
	return nil
}

// makeKey runs `usltun genkey` and `usltun pubkey`, as a user would, and
// returns the private key's file and the public key.
func (w *world) makeKey(ctx context.Context, host string) (path, pub string, err error) {
	priv, err := exec.CommandContext(ctx, w.bin, "genkey").Output()
	if err != nil {
		return "", "", fmt.Errorf("usltun genkey: %w", exitDetail(err))
	}
	path = filepath.Join(w.dir, host+".key")
	if err := os.WriteFile(path, priv, 0o600); err != nil {
		return "", "", fmt.Errorf("write key: %w", err)
	}
	cmd := exec.CommandContext(ctx, w.bin, "pubkey")
	cmd.Stdin = bytes.NewReader(priv)
	out, err := cmd.Output()
	if err != nil {
		return "", "", fmt.Errorf("usltun pubkey: %w", exitDetail(err))
	}
	return path, strings.TrimSpace(string(out)), nil
}

// stopTunnel stops both daemons with SIGTERM, A first (it owns the flows).
func (w *world) stopTunnel() error {
	var errs []error
	for _, h := range []string{"a", "b"} {
		if p := w.usltun[h]; p != nil {
			if err := p.Stop(); err != nil {
				errs = append(errs, fmt.Errorf("usltun on %s: %w", strings.ToUpper(h), err))
			}
		}
	}
	return errors.Join(errs...)
}

// saveDaemonLogs writes each daemon's output to usltun-<host>.log.
func (w *world) saveDaemonLogs() {
	for h, p := range w.usltun {
		_ = os.WriteFile(filepath.Join(w.dir, "usltun-"+h+".log"), []byte(p.Output()), 0o644)
	}
}

// saveReport writes loadgen's full report of a part to <name>-report.txt,
// for a closer look when the summary is not enough.
func (w *world) saveReport(name string, rep *loadgen.Report) {
	_ = os.WriteFile(filepath.Join(w.dir, name+"-report.txt"), []byte(rep.String()), 0o644)
}

// sessionStatus is the part of `usltun status --json` the demo shows.
type sessionStatus struct {
	Device             string `json:"-"` // the TUN device, once created
	State              string `json:"state"`
	Reconnects         uint64 `json:"reconnects"`
	RetransmittedBytes uint64 `json:"retransmitted_bytes"`
	BytesOut           uint64 `json:"bytes_out"`
	LastError          string `json:"last_error"`
	Paths              []struct {
		State string `json:"state"`
	} `json:"paths"`
}

// upPaths counts the session's paths that are up.
func (s *sessionStatus) upPaths() int {
	n := 0
	for _, p := range s.Paths {
		if p.State == "up" {
			n++
		}
	}
	return n
}

// parseStatus reads the session out of a status document; a daemon whose
// session does not exist yet reports state "connecting".
func parseStatus(doc []byte) (sessionStatus, error) {
	var st struct {
		Device  string         `json:"device"`
		Session *sessionStatus `json:"session"`
	}
	if err := json.Unmarshal(doc, &st); err != nil {
		return sessionStatus{}, fmt.Errorf("status: %w", err)
	}
	s := sessionStatus{State: "connecting"}
	if st.Session != nil {
		s = *st.Session
	}
	s.Device = st.Device
	return s, nil
}

// status asks A's daemon with `usltun status --json`, inside A.
func (w *world) status() (sessionStatus, error) {
	out, err := w.a.Run(w.bin, "status", "--json")
	if err != nil {
		return sessionStatus{}, fmt.Errorf("usltun status: %w: %s", err, strings.TrimSpace(out))
	}
	return parseStatus([]byte(out))
}

// waitSession polls A's status until ok holds, timeout passes or ctx ends.
func (w *world) waitSession(ctx context.Context, timeout time.Duration, ok func(*sessionStatus) bool) (sessionStatus, error) {
	deadline := time.Now().Add(timeout)
	var last sessionStatus
	var lastErr error
	for time.Now().Before(deadline) {
		st, err := w.status()
		if err == nil && ok(&st) {
			return st, nil
		}
		last, lastErr = st, err
		if !sleepCtx(ctx, 50*time.Millisecond) {
			return last, ctx.Err()
		}
	}
	if lastErr != nil {
		return last, lastErr
	}
	return last, fmt.Errorf("still %q after %v (last error: %q)", last.State, timeout, last.LastError)
}

// countingListener counts the bytes read on its connections: what C's
// application received, for the live line.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{c, l.n}, nil
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.Add(int64(n))
	return n, err
}

// CloseWrite keeps half-close working through the wrapper; loadgen ends
// each direction with a FIN.
func (c countingConn) CloseWrite() error {
	cw, ok := c.Conn.(interface{ CloseWrite() error })
	if !ok {
		return fmt.Errorf("%T cannot half-close", c.Conn)
	}
	return cw.CloseWrite()
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// exitDetail adds a failed command's stderr to its error.
func exitDetail(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
	}
	return err
}
