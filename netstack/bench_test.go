package netstack

import (
	"context"
	"io"
	"net"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/usltun/usltun/flow"
)

// BenchmarkTCPThroughput measures one TCP flow from a kernel socket through
// the TUN device into the netstack and out to an in-process sink Dialer:
// the per-packet cost of the client side of usltun without the session.
// Reported: throughput, TUN packets (both ways) per MiB and the wall time
// per packet, and process CPU (kernel sender + TUN + gVisor + splice) per GB.
func BenchmarkTCPThroughput(b *testing.B) {
	for _, bc := range []struct {
		name      string
		noOffload bool
		download  bool
	}{
		{"upload/offload", false, false}, {"upload/plain", true, false},
		{"download/offload", false, true}, {"download/plain", true, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			const warm = 16 // MiB moved before measuring: window and buffer growth
			var remote flow.Conn = newSink()
			if bc.download {
				remote = &sourceConn{sinkConn: newSink(), left: int64(warm+b.N) << 20}
			}
			h := newHarness(b, Config{Dialer: dialFunc(func(context.Context, flow.Dest) (flow.Conn, error) { return remote, nil })}, bc.noOffload)
			c, err := h.dial("tcp", "10.66.1.99:5201", 5*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			buf := make([]byte, 1<<20)
			move := func(n int) {
				for range n {
					var err error
					if bc.download {
						_, err = io.ReadFull(c, buf)
					} else {
						_, err = c.Write(buf)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			}
			move(warm)
			rx0, tx0 := h.dev.Stats().RxPackets, h.dev.Stats().TxPackets
			var ru0 syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			start := time.Now()
			move(b.N)
			c.(*net.TCPConn).CloseWrite()
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.Copy(io.Discard, c); err != nil { // EOF: everything was delivered
				b.Fatal(err)
			}
			el := time.Since(start)
			b.StopTimer()
			var ru1 syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
			// Packets across the TUN both ways (data and ACKs): each is one
			// syscall and one trip through gVisor's IP layer.
			pkts := float64(h.dev.Stats().RxPackets - rx0 + h.dev.Stats().TxPackets - tx0)
			mib := float64(b.N)
			cpu := time.Duration(syscall.TimevalToNsec(ru1.Utime) + syscall.TimevalToNsec(ru1.Stime) -
				syscall.TimevalToNsec(ru0.Utime) - syscall.TimevalToNsec(ru0.Stime))
			b.ReportMetric(mib*8*(1<<20)/el.Seconds()/1e9, "Gbit/s")
			b.ReportMetric(pkts/mib, "pkts/MiB")
			b.ReportMetric(float64(el.Nanoseconds())/pkts, "ns/pkt")
			b.ReportMetric(cpu.Seconds()/(mib*(1<<20)/1e9), "cpu-s/GB")
		})
	}
}

// sourceConn is a remote half that sends left bytes (unspecified content)
// as fast as it is read, then EOF, and discards what it receives.
type sourceConn struct {
	*sinkConn
	left int64
}

func (s *sourceConn) Read(p []byte) (int, error) {
	if s.left <= 0 {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), s.left))
	s.left -= int64(n)
	return n, nil
}

func (s *sourceConn) CloseWrite() error { return nil }

// BenchmarkRoundTrip measures small request/response latency through the
// TUN device and the netstack, with an in-process echo as the remote half:
// the client side's share of usltun's request/response latency.
func BenchmarkRoundTrip(b *testing.B) {
	h := newHarness(b, Config{Dialer: dialFunc(func(context.Context, flow.Dest) (flow.Conn, error) { return newEcho(), nil })}, false)
	c, err := h.dial("tcp", "10.66.1.98:7", 5*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetNoDelay(true)
	msg := make([]byte, 64)
	buf := make([]byte, 64)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// echoConn is a remote half that sends back what it receives.
type echoConn struct {
	*sinkConn
	r *io.PipeReader
	w *io.PipeWriter
}

func newEcho() *echoConn {
	r, w := io.Pipe()
	return &echoConn{sinkConn: newSink(), r: r, w: w}
}

func (e *echoConn) Read(p []byte) (int, error)  { return e.r.Read(p) }
func (e *echoConn) Write(p []byte) (int, error) { return e.w.Write(p) }
func (e *echoConn) CloseWrite() error           { return e.w.Close() }
func (e *echoConn) Close() error {
	e.w.Close()
	e.r.Close()
	return e.sinkConn.Close()
}
