package main

// Diagnostics of the end-to-end tests: what the kernel and the daemons hold
// when a scenario stalls, and the daemons' memory.

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usltun/usltun/testenv"
)

// dialedSockets counts the daemon's established TCP connections to port
// (in its network namespace, read through /proc/<pid>/net).
func dialedSockets(t *testing.T, p *testenv.Proc, port int) int {
	n := 0
	for _, f := range []string{"tcp", "tcp6"} {
		fh, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", p.Pid(), f))
		if err != nil {
			t.Errorf("count sockets: %v", err)
			return -1
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			// sl local_address rem_address st ...; st 01 is ESTABLISHED.
			if len(fields) < 4 || fields[3] != "01" {
				continue
			}
			_, rport, ok := strings.Cut(fields[2], ":")
			if v, err := strconv.ParseUint(rport, 16, 16); ok && err == nil && int(v) == port {
				n++
			}
		}
		fh.Close()
	}
	return n
}

// socketsWith lists the TCP sockets in h's namespace that have port on
// either end, as /proc/net/tcp shows them: addresses, state (01
// established, 04/05 FIN_WAIT1/2, 08 CLOSE_WAIT), send and receive queues.
func socketsWith(h *testenv.Host, port int) string {
	out, err := h.Run("cat", "/proc/net/tcp", "/proc/net/tcp6")
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) < 5 || fields[3] == "06" {
			continue
		}
		for _, end := range fields[1:3] {
			_, p, _ := strings.Cut(end, ":")
			if v, err := strconv.ParseUint(p, 16, 16); err == nil && int(v) == port {
				fmt.Fprintf(&b, "%s %s st %s queues %s\n", fields[1], fields[2], fields[3], fields[4])
				break
			}
		}
	}
	return b.String()
}

// tcpCounters picks the kernel's TCP counters of h that tell drops,
// zero windows and timeouts apart.
func tcpCounters(h *testenv.Host) string {
	out, err := h.Run("nstat", "-az")
	if err != nil {
		return err.Error()
	}
	var keep []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[1] == "0" {
			continue
		}
		for _, k := range []string{"RcvQDrop", "ZeroWindow", "Prune", "OFODrop", "Timeouts", "RetransSegs", "BacklogDrop", "MemoryPressures", "Probe"} {
			if strings.Contains(f[0], k) {
				keep = append(keep, f[0]+"="+f[1])
				break
			}
		}
	}
	return strings.Join(keep, " ")
}

// rssWatch samples both daemons' RSS until the test ends and keeps the
// peaks. A daemon that is down (killed, restarting) is simply not sampled.
type rssWatch struct {
	mu           sync.Mutex
	peakA, peakB int64
}

func watchRSS(t *testing.T, a, b *testenv.Proc) *rssWatch {
	w := &rssWatch{}
	stop := make(chan struct{})
	done := make(chan struct{})
	sample := func() {
		ra, _ := a.RSS()
		rb, _ := b.RSS()
		w.mu.Lock()
		w.peakA, w.peakB = max(w.peakA, ra), max(w.peakB, rb)
		w.mu.Unlock()
	}
	sample()
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				sample()
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return w
}

func (w *rssWatch) peaks() (a, b int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.peakA, w.peakB
}
