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
	// wgtun is the same path on golang.zx2c4.com/wireguard/tun instead of
	// usltun's own device (wgtun_linux_test.go), next to offload so that
	// the two run back to back in every count.
	for _, bc := range []struct {
		name      string
		noOffload bool
		wgtun     bool
		download  bool
	}{
		{"upload/offload", false, false, false}, {"upload/wgtun", false, true, false}, {"upload/plain", true, false, false},
		{"download/offload", false, false, true}, {"download/wgtun", false, true, true}, {"download/plain", true, false, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			const warm = 16 // MiB moved before measuring: window and buffer growth
			sink := newSink()
			var remote flow.Conn = sink
			if bc.download {
				remote = &sourceConn{sinkConn: sink, left: int64(warm+b.N) << 20}
			}
			cfg := Config{Dialer: dialFunc(func(context.Context, flow.Dest) (flow.Conn, error) { return remote, nil })}
			var h *harness
			if bc.wgtun {
				h = newHarnessOn(b, cfg, newWGDevice)
			} else {
				h = newHarness(b, cfg, bc.noOffload)
			}
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
			rest, err := io.Copy(io.Discard, c) // EOF: everything was delivered
			if err != nil {
				b.Fatal(err)
			}
			el := time.Since(start)
			b.StopTimer()
			// Every byte arrived, and no more: the sink counted the upload,
			// the download was read in full and then ended.
			if want := int64(warm+b.N) << 20; !bc.download && sink.n.Load() != want {
				b.Fatalf("sink got %d bytes, sent %d", sink.n.Load(), want)
			}
			if rest != 0 {
				b.Fatalf("%d bytes after the end of the download", rest)
			}
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
