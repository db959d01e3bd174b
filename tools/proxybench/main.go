// Command proxybench measures usltun's proxy front ends against its TUN
// device on one A—B—C lab of network namespaces, in one run:
//
//   - single-flow TCP throughput A→C (loadgen bulk, unverified, median of
//     --repeat runs, the modes alternating) through usl0 routing, through
//     --socks and through --http-proxy, as a ratio to usl0;
//   - the same through `usltun exec`: proxybench runs itself inside exec
//     (the probe mode below), so the flows leave through the exec
//     namespace's TUN device and the daemon's netstack for it;
//   - connect latency, p50 and p99 of --connects sequential connects: direct
//     routing A→B→C (no tunnel), usl0, SOCKS5 CONNECT, HTTP CONNECT (for
//     the proxies: from the TCP connect to the proxy until its success
//     reply, which comes after the far side's dial) and exec, as a ratio to
//     direct.
//
// A's daemon routes C's usltun subnet and serves both proxies; B's exports
// C's subnets. It needs root; everything it creates is removed on exit.
//
//	go run ./tools/proxybench [--repeat 3] [--duration 3s] [--connects 200]
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/usltun/usltun/socks"
	"github.com/usltun/usltun/testenv"
	"github.com/usltun/usltun/tools/loadgen"
)

const (
	addrA, addrB = "10.0.0.1", "10.0.0.2"
	addrBC       = "10.20.0.1"
	cDirect      = "10.20.1.2" // reached by plain routing through B
	cUSL         = "10.20.3.2" // reached through the tunnel
	bulkPort     = "5300"
	connectPort  = "5301"
	socksAddr    = "127.0.0.1:1080"
	httpAddr     = "127.0.0.1:8080"
)

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// probeArg runs proxybench as the measuring client inside `usltun exec`:
// probe bulk ADDR DURATION prints bits/s; probe connect ADDR N prints the
// p50 and p99 in nanoseconds.
const probeArg = "__probe"

func probe(args []string) error {
	if len(args) != 3 {
		return errors.New("probe: want bulk ADDR DURATION or connect ADDR N")
	}
	var plain net.Dialer
	switch args[0] {
	case "bulk":
		d, err := time.ParseDuration(args[2])
		if err != nil {
			return err
		}
		rep, err := loadgen.RunFor(context.Background(), loadgen.Config{Addr: args[1], Mode: loadgen.Bulk, Dirs: loadgen.Up, Duration: d, NoVerify: true})
		if err != nil {
			return err
		}
		if len(rep.Errnos()) > 0 {
			return fmt.Errorf("errors %v", rep.Errnos())
		}
		fmt.Println(rep.BitsPerSec)
	case "connect":
		var n int
		fmt.Sscan(args[2], &n)
		p50, p99, err := connectLatency(context.Background(), plain.DialContext, args[1], max(n, 1))
		if err != nil {
			return err
		}
		fmt.Println(int64(p50), int64(p99))
	default:
		return fmt.Errorf("probe: unknown mode %q", args[0])
	}
	return nil
}

// viaExec runs the probe inside `usltun exec` on a and returns its output.
func viaExec(a *testenv.Host, bin string, args ...string) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := a.RunContext(ctx, append([]string{bin, "exec", "--name", "proxybench", "--", self, probeArg}, args...)...)
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, strings.TrimSpace(out))
	}
	return strings.TrimSpace(out), nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == probeArg {
		if err := probe(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "proxybench probe:", err)
			os.Exit(1)
		}
		return
	}
	repeat := flag.Int("repeat", 3, "throughput runs per mode; the median counts")
	dur := flag.Duration("duration", 3*time.Second, "length of each throughput run")
	connects := flag.Int("connects", 200, "sequential connects per mode")
	bin := flag.String("usltun", "", "usltun binary (default: go build ./cmd/usltun)")
	flag.Parse()
	if err := run(*repeat, *dur, *connects, *bin); err != nil {
		fmt.Fprintln(os.Stderr, "proxybench:", err)
		os.Exit(1)
	}
}

func run(repeat int, dur time.Duration, connects int, bin string) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root: it builds network namespaces (sudo go run ./tools/proxybench)")
	}
	if repeat < 1 || connects < 1 {
		return errors.New("--repeat and --connects must be at least 1")
	}
	lab := testenv.NewLab(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	defer lab.Close()
	defer lab.Recover(&err)
	stop := lab.CloseOnSignal()
	defer stop()
	dir, err := os.MkdirTemp("", "proxybench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if bin == "" {
		bin = filepath.Join(dir, "usltun")
		if out, err := exec.Command("go", "build", "-o", bin, "./cmd/usltun").CombinedOutput(); err != nil {
			return fmt.Errorf("go build: %v: %s", err, out)
		}
	}

	a, b, c := testenv.NewHost(lab, "a"), testenv.NewHost(lab, "b"), testenv.NewHost(lab, "c")
	testenv.Link(lab, a, b, addrA+"/24", addrB+"/24")
	testenv.Link(lab, b, c, addrBC+"/16", cDirect+"/16,"+cUSL+"/16")
	b.EnableForwarding()
	c.AddRoute("default", addrBC)
	a.AddRoute("10.20.1.0/24", addrB)

	keys, pubs := [2]string{}, [2]string{}
	for i, name := range []string{"a", "b"} {
		keys[i] = filepath.Join(dir, name+".key")
		f, _ := os.OpenFile(keys[i], os.O_CREATE|os.O_WRONLY, 0o600)
		gen := exec.Command(bin, "genkey")
		gen.Stdout = f
		err := gen.Run()
		f.Close()
		if err != nil {
			return fmt.Errorf("genkey: %w", err)
		}
		in, _ := os.Open(keys[i])
		pk := exec.Command(bin, "pubkey")
		pk.Stdin = in
		out, err := pk.Output()
		in.Close()
		if err != nil {
			return fmt.Errorf("pubkey: %w", err)
		}
		pubs[i] = strings.TrimSpace(string(out))
	}
	b.Start(lab, "usltun-b", bin, "up", "--listen", addrB, "--key", keys[1], "--peer-key", pubs[0],
		"--export", "10.20.0.0/16", "--log-level", "warn")
	a.Start(lab, "usltun-a", bin, "up", "--peer", addrB, "--key", keys[0], "--peer-key", pubs[1],
		"--route", "10.20.3.0/24", "--socks", socksAddr, "--http-proxy", httpAddr, "--log-level", "warn")

	bulk, err := c.Listen("tcp", ":"+bulkPort)
	if err != nil {
		return err
	}
	srv := loadgen.NewServer(bulk, nil)
	defer srv.Close()
	cl, err := c.Listen("tcp", ":"+connectPort)
	if err != nil {
		return err
	}
	defer cl.Close()
	go func() {
		for {
			conn, err := cl.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	ctx := context.Background()
	if err := a.WaitDial("tcp", net.JoinHostPort(cUSL, connectPort), 15*time.Second); err != nil {
		return fmt.Errorf("tunnel not up: %w", err)
	}

	// Each mode's dialer from any goroutine (dial), and from a thread
	// already inside A (local), for the connect timings: the namespace
	// switch of a.DialContext stays out of the measured interval.
	var plain net.Dialer
	modes := []struct {
		name        string
		target      string
		dial, local dialFunc
	}{
		{"direct routing (no tunnel)", cDirect, a.DialContext, plain.DialContext},
		{"usl0 (TUN, netstack)", cUSL, a.DialContext, plain.DialContext},
		{"SOCKS5 CONNECT", cUSL, viaSOCKS(a.DialContext), viaSOCKS(plain.DialContext)},
		{"HTTP CONNECT", cUSL, viaHTTP(a.DialContext), viaHTTP(plain.DialContext)},
	}
	// Throughput: the tunnel modes, alternating, median of repeat.
	rates := map[int][]float64{}
	for i := 0; i < repeat; i++ {
		for m := 1; m < len(modes); m++ {
			rep, err := loadgen.RunFor(ctx, loadgen.Config{
				Addr: net.JoinHostPort(modes[m].target, bulkPort), Dial: modes[m].dial,
				Mode: loadgen.Bulk, Dirs: loadgen.Up, Duration: dur, NoVerify: true,
			})
			if err != nil {
				return fmt.Errorf("%s throughput: %w", modes[m].name, err)
			}
			if len(rep.Errnos()) > 0 {
				return fmt.Errorf("%s throughput: errors %v", modes[m].name, rep.Errnos())
			}
			rates[m] = append(rates[m], rep.BitsPerSec/1e9)
		}
		out, err := viaExec(a, bin, "bulk", net.JoinHostPort(cUSL, bulkPort), dur.String())
		if err != nil {
			return fmt.Errorf("exec throughput: %w", err)
		}
		var bps float64
		if _, err := fmt.Sscan(out, &bps); err != nil {
			return fmt.Errorf("exec throughput: %q: %w", out, err)
		}
		rates[len(modes)] = append(rates[len(modes)], bps/1e9)
	}
	lat := map[int][2]time.Duration{}
	for m := range modes {
		var p50, p99 time.Duration
		err := a.Do(func() (err error) {
			p50, p99, err = connectLatency(ctx, modes[m].local, net.JoinHostPort(modes[m].target, connectPort), connects)
			return err
		})
		if err != nil {
			return fmt.Errorf("%s connect: %w", modes[m].name, err)
		}
		lat[m] = [2]time.Duration{p50, p99}
	}
	out, err := viaExec(a, bin, "connect", net.JoinHostPort(cUSL, connectPort), fmt.Sprint(connects))
	if err != nil {
		return fmt.Errorf("exec connect: %w", err)
	}
	var p50, p99 int64
	if _, err := fmt.Sscan(out, &p50, &p99); err != nil {
		return fmt.Errorf("exec connect: %q: %w", out, err)
	}
	lat[len(modes)] = [2]time.Duration{time.Duration(p50), time.Duration(p99)}
	names := []string{}
	for _, md := range modes {
		names = append(names, md.name)
	}
	names = append(names, "usltun exec (namespace TUN, netstack)")

	fmt.Printf("proxybench: %d × %v throughput runs per mode (median), %d connects per mode; %s\n\n", repeat, dur, connects, loadavg())
	fmt.Println("| path | Gbit/s (1 flow) | vs usl0 | connect p50 | connect p99 | p50 vs direct |")
	fmt.Println("| --- | --- | --- | --- | --- | --- |")
	base := median(rates[1])
	for m, name := range names {
		tp, ratio := "—", "—"
		if m > 0 {
			r := median(rates[m])
			tp, ratio = fmt.Sprintf("%.2f", r), fmt.Sprintf("%.2f", r/base)
		}
		fmt.Printf("| %s | %s | %s | %v | %v | %.1f× |\n", name, tp, ratio,
			lat[m][0].Round(time.Microsecond), lat[m][1].Round(time.Microsecond), float64(lat[m][0])/float64(lat[0][0]))
	}
	return nil
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return "load average " + strings.Join(strings.Fields(string(b))[:3], " ")
}

// viaSOCKS dials through A's SOCKS5 listener, reached with base.
func viaSOCKS(base dialFunc) dialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := base(ctx, "tcp", socksAddr)
		if err != nil {
			return nil, err
		}
		if err := socks.Connect(c, addr); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
}

// bufConn is a connection whose first bytes were read into br.
type bufConn struct {
	net.Conn
	br *bufio.Reader
}

func (c *bufConn) Read(b []byte) (int, error) { return c.br.Read(b) }

func (c *bufConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

// viaHTTP dials through A's HTTP proxy with CONNECT, reached with base.
func viaHTTP(base dialFunc) dialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := base(ctx, "tcp", httpAddr)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", addr, addr)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err == nil && resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			err = fmt.Errorf("CONNECT %s: %s: %s", addr, resp.Status, strings.TrimSpace(string(b)))
		}
		if err != nil {
			c.Close()
			return nil, err
		}
		return &bufConn{Conn: c, br: br}, nil
	}
}

// connectLatency times n sequential connects with dial; the server side
// accepts and closes.
func connectLatency(ctx context.Context, dial dialFunc, addr string, n int) (p50, p99 time.Duration, err error) {
	samples := make([]time.Duration, 0, n)
	for range n {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		t0 := time.Now()
		c, err := dial(dctx, "tcp", addr)
		d := time.Since(t0)
		cancel()
		if err != nil {
			return 0, 0, err
		}
		c.Close()
		samples = append(samples, d)
	}
	slices.Sort(samples)
	return samples[len(samples)/2], samples[min(len(samples)-1, len(samples)*99/100)], nil
}
