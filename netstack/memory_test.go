package netstack

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/usltun/usltun/flow"
)

// TestIdleFlowMemory measures what an idle spliced TCP flow costs in the
// netstack (gVisor endpoint, two pump goroutines, their small buffers) and
// holds it to a budget that leaves room for 10,000 flows in 1 GiB with the
// session layer on top.
func TestIdleFlowMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 1000 connections")
	}
	const flows = 1000
	const budget = 48 << 10 // bytes per idle flow, heap + goroutine stacks
	h := newHarness(t, Config{Dialer: dialFunc(func(context.Context, flow.Dest) (flow.Conn, error) { return newSink(), nil })}, false)
	before := inUse()
	conns := make([]net.Conn, 0, flows)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range flows {
		c, err := h.dial("tcp", fmt.Sprintf("10.66.1.%d:%d", 100+i%100, 1000+i), 5*time.Second)
		if err != nil {
			t.Fatalf("flow %d: %v", i, err)
		}
		c.Write([]byte("hello")) // each flow has moved a little data
		conns = append(conns, c)
	}
	waitFor(t, 10*time.Second, func() bool { return h.st.Stats().TCPFlows == flows })
	per := (inUse() - before) / flows
	t.Logf("idle TCP flow: %d bytes (heap + stacks) each, %d MiB per 10,000 flows", per, per*10000>>20)
	if per > budget {
		t.Fatalf("idle flow costs %d bytes, budget %d", per, budget)
	}
}

func inUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse + m.StackInuse)
}
