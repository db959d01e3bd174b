package main

import (
	"context"
	"errors"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

var (
	pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)
	pingRTT     = regexp.MustCompile(`rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/`)
	pingSeq     = regexp.MustCompile(`icmp_seq=(\d+) `)
)

// pingResult is what ping printed: how many were sent and answered, the
// sequence numbers answered, and the minimum and average RTT.
type pingResult struct {
	sent, received int
	seqs           map[int]bool
	min, avg       time.Duration
	out            string
}

// ping runs the real ping in h for count echoes at interval.
func (l *e2eLab) ping(target string, count int, interval time.Duration) pingResult {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(count)*interval+10*time.Second)
	defer cancel()
	out, err := l.A.RunContext(ctx, "ping", "-n", "-c", strconv.Itoa(count), "-i", strconv.FormatFloat(interval.Seconds(), 'f', 2, 64), "-W", "1", target)
	// ping exits 1 when replies are missing; that is a result, not an error.
	var ee *exec.ExitError
	if err != nil && (!errors.As(err, &ee) || ee.ExitCode() != 1) {
		l.t.Fatalf("ping %s: %v\n%s", target, err, out)
	}
	r := pingResult{seqs: map[int]bool{}, out: out}
	m := pingSummary.FindStringSubmatch(out)
	if m == nil {
		l.t.Fatalf("ping %s printed no summary:\n%s", target, out)
	}
	r.sent, _ = strconv.Atoi(m[1])
	r.received, _ = strconv.Atoi(m[2])
	if m := pingRTT.FindStringSubmatch(out); m != nil {
		mn, _ := strconv.ParseFloat(m[1], 64)
		av, _ := strconv.ParseFloat(m[2], 64)
		r.min, r.avg = time.Duration(mn*float64(time.Millisecond)), time.Duration(av*float64(time.Millisecond))
	}
	for _, m := range pingSeq.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[1])
		r.seqs[n] = true
	}
	return r
}

// TestE2EPing: ping through usl0 is answered by the real destination over
// the session, never by A's own stack. C answers echo 30 ms late (its
// kernel's answer is switched off and a responder of the test's replies),
// and the RTT ping shows on A includes those 30 ms; an unexported address and a C that B cannot
// reach give 100 % loss; a blackhole of A—B shows as loss, and replies come
// back after the heal.
func TestE2EPing(t *testing.T) {
	if _, err := exec.LookPath("ping"); err != nil {
		t.Fatal("ping not installed (make deps installs iputils-ping)")
	}
	l := newLab(t, labOpts{})
	const delay = 30 * time.Millisecond
	startSlowEcho(t, l, delay)

	t.Run("rtt", func(t *testing.T) {
		for _, target := range []string{addrC4, addrC6} {
			r := l.ping(target, 5, 200*time.Millisecond)
			if r.received != 5 || r.min < delay || r.avg > delay+100*time.Millisecond {
				t.Fatalf("ping %s: %d/%d received, rtt min %v avg %v; want 5/5 and ≥ %v (C's delay):\n%s", target, r.received, r.sent, r.min, r.avg, delay, r.out)
			}
			t.Logf("ping %s through usl0: 5/5, rtt min %v avg %v", target, r.min, r.avg)
		}
	})

	t.Run("unexported", func(t *testing.T) {
		if r := l.ping("10.97.0.5", 3, 200*time.Millisecond); r.received != 0 {
			t.Fatalf("ping to an address B does not export: %d replies:\n%s", r.received, r.out)
		}
	})

	t.Run("c_unreachable", func(t *testing.T) {
		l.BC.Down()
		r := l.ping(addrC4, 5, 200*time.Millisecond)
		l.BC.Up()
		if r.received != 0 {
			t.Fatalf("ping to C while B cannot reach it: %d replies:\n%s", r.received, r.out)
		}
	})

	t.Run("blackhole", func(t *testing.T) {
		// 40 echoes 200 ms apart; A—B is blackholed from 1 s to 4 s.
		const count, interval = 40, 200 * time.Millisecond
		done := make(chan pingResult, 1)
		go func() { done <- l.ping(addrC4, count, interval) }()
		time.Sleep(time.Second)
		l.AB.Blackhole()
		time.Sleep(3 * time.Second)
		l.AB.Heal()
		r := <-done
		var lostDuring, afterHeal int
		// Sent 1.2–2.4 s in: their replies could only come after the
		// heal, more than a second late: lost.
		for seq := 7; seq <= 13; seq++ {
			if !r.seqs[seq] {
				lostDuring++
			}
		}
		// Sent from 6.6 s on, well after the heal and the reconnect.
		for seq := 34; seq <= count; seq++ {
			if r.seqs[seq] {
				afterHeal++
			}
		}
		if lostDuring != 7 || afterHeal != 7 || !r.seqs[1] {
			t.Fatalf("blackhole: %d of seq 7–13 lost (want 7), %d of seq 34–40 answered (want 7), seq 1 answered %v:\n%s", lostDuring, afterHeal, r.seqs[1], r.out)
		}
		t.Logf("blackhole: %d/%d received; loss during it, replies after the heal", r.received, r.sent)
	})
}

// startSlowEcho makes C answer echo requests (IPv4 and IPv6) itself, delay
// after each arrives, instead of its kernel. The kernel that could add a
// fixed delay on a link (netem) is not available on every test machine;
// a slow destination proves the same: the RTT is the far host's.
func startSlowEcho(t *testing.T, l *e2eLab, delay time.Duration) {
	t.Helper()
	for _, kv := range [][2]string{{"net.ipv4.icmp_echo_ignore_all", "1"}, {"net.ipv6.icmp.echo_ignore_all", "1"}} {
		if err := l.C.Sysctl(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		network, laddr string
		proto          int
		req, rep       icmp.Type
	}{
		{"ip4:icmp", addrC4, 1, ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply},
		{"ip6:ipv6-icmp", addrC6, 58, ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply},
	} {
		var pc *icmp.PacketConn
		if err := l.C.Do(func() (err error) { pc, err = icmp.ListenPacket(c.network, c.laddr); return err }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		go slowEcho(pc, c.proto, c.req, c.rep, delay)
	}
}

func slowEcho(pc *icmp.PacketConn, proto int, req, rep icmp.Type, delay time.Duration) {
	buf := make([]byte, 65536)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return // closed by the test's cleanup
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || m.Type != req {
			continue
		}
		e, ok := m.Body.(*icmp.Echo)
		if !ok {
			continue
		}
		b, err := (&icmp.Message{Type: rep, Body: e}).Marshal(nil)
		if err != nil {
			continue
		}
		time.AfterFunc(delay, func() { pc.WriteTo(b, from) })
	}
}
