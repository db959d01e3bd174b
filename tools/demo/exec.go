package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/usltun/usltun/testenv"
)

// The exec scene: "the demo using proxies and netcat". Two nc clients on A
// talk to a line server on C, one inside `usltun exec` (so through the
// tunnel, whatever nc is linked with), one plain next to it; both send a
// line every 200 ms and print the server's numbered answers. Resets hit
// the A—B link on the tunnel's port and on the line server's: the plain nc
// dies, the one in exec never notices.

const (
	linePort     = 9100
	lineInterval = 200 * time.Millisecond
)

var (
	execLineDst  = strings.Split(tunnelDst, ":")[0] // C through the tunnel
	plainLineDst = strings.Split(plainDst, ":")[0]  // C by plain routing
)

// startLineServer answers every line of a connection with "line N" (N
// counting from 1) until the client half-closes.
func (w *world) startLineServer() error {
	ln, err := w.c.Listen("tcp", fmt.Sprintf(":%d", linePort))
	if err != nil {
		return fmt.Errorf("listen on C: %w", err)
	}
	var wg sync.WaitGroup
	w.lab.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(2 * time.Minute))
				sc := bufio.NewScanner(c)
				for n := 1; sc.Scan(); n++ {
					if _, err := fmt.Fprintf(c, "line %d\n", n); err != nil {
						return
					}
				}
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return nil
}

// ncClient is nc on A fed one line per lineInterval, count lines in all.
func ncClient(dst string, count int) []string {
	feed := fmt.Sprintf("i=0; while [ $i -lt %d ]; do i=$((i+1)); echo ping $i; sleep %.1f; done | nc -N %s %d; echo nc-exit=$?",
		count, lineInterval.Seconds(), dst, linePort)
	return []string{"sh", "-c", feed}
}

var lineRE = regexp.MustCompile(`line (\d+)`)

// received is the numbers of the "line N" answers in a client's output,
// and whether they run 1, 2, 3, ... without a gap.
func received(out string) (n int, inOrder bool) {
	inOrder = true
	for _, m := range lineRE.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.Atoi(m[1])
		if v != n+1 {
			inOrder = false
		}
		n = v
	}
	return n, inOrder
}

// execPart runs the scene and reports whether it showed the claim: every
// line through exec, in order, nc exiting 0; the plain nc dead early.
func (w *world) execPart(ctx context.Context, o *options, con *console) (bool, error) {
	if err := w.startLineServer(); err != nil {
		return false, err
	}
	count := int((time.Duration(o.Resets)*time.Second + 3*time.Second) / lineInterval)
	con.say("Now netcat: two nc clients on A send a line every %v to a line server on C, which numbers its answers.", lineInterval)
	con.say("  one runs as `usltun exec -- nc %s %d`, in a network namespace served by A's usltun;", execLineDst, linePort)
	con.say("  the other is plain `nc %s %d`, routed by the kernel.", plainLineDst, linePort)
	inExec := w.a.Start(w.lab, "exec-nc", append([]string{w.bin, "exec", "--name", "nc", "--"}, ncClient(execLineDst, count)...)...)
	plain := w.a.Start(w.lab, "plain-nc", ncClient(plainLineDst, count)...)
	if !sleepCtx(ctx, time.Second) {
		return false, ctx.Err()
	}
	con.say("Resetting TCP on the A—B link %d times, on the tunnel's port %d and on the line server's %d.", o.Resets, sessionPort, linePort)
	for i := 1; i <= o.Resets; i++ {
		w.ab.ResetTCP(sessionPort)
		w.ab.ResetTCP(linePort)
		if !sleepCtx(ctx, 300*time.Millisecond) {
			return false, ctx.Err()
		}
		w.ab.Heal()
		if !sleepCtx(ctx, 700*time.Millisecond) {
			return false, ctx.Err()
		}
	}
	limit := time.Duration(count)*lineInterval + 30*time.Second
	for _, p := range []*testenv.Proc{inExec, plain} {
		if err := p.Wait(limit); err != nil {
			return false, fmt.Errorf("nc did not finish: %w", err)
		}
	}
	execN, execOrder := received(inExec.Output())
	plainN, _ := received(plain.Output())
	execOK := execN == count && execOrder && strings.Contains(inExec.Output(), "nc-exit=0")
	plainDied := plainN < count
	con.say("")
	con.say("usltun exec -- nc   %d of %d lines, %s, %s", execN, count, map[bool]string{true: "in order", false: "OUT OF ORDER"}[execOrder], lastNC(inExec.Output()))
	con.say("plain nc            %d of %d lines: the first reset killed its connection (%s)", plainN, count, lastNC(plain.Output()))
	return execOK && plainDied, nil
}

// lastNC is nc's exit line, or what it printed last.
func lastNC(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], "nc-exit=") {
			if _, rest, ok := strings.Cut(lines[i], "nc-exit="); ok {
				return "nc exited " + strings.TrimSpace(rest)
			}
		}
	}
	return strings.TrimSpace(lines[len(lines)-1])
}
