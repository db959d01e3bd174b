package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/usltun/usltun/testenv"
)

// blobSize is the size of the HTTP download and upload.
const blobSize = 64 << 20

// httpPort is the port of the HTTP server on C.
const httpPort = 8080

// blobServer is Go's net/http server on C. GET /blob serves the blob,
// POST /upload answers with the SHA-256 and length of what it read. With
// ?pace=1 the download is written in slices with pauses, so that a transfer
// spans the faults a test injects (the tunnel moves 64 MiB in a fraction of
// a second otherwise).
type blobServer struct {
	blob []byte
	sum  string
	srv  *http.Server
}

func newBlob() ([]byte, string) {
	b := make([]byte, blobSize)
	r := rand.NewChaCha8([32]byte{'u', 's', 'l'})
	r.Read(b)
	s := sha256.Sum256(b)
	return b, hex.EncodeToString(s[:])
}

func startBlobServer(t *testing.T, c *testenv.Host, addr string) *blobServer {
	t.Helper()
	bs := &blobServer{}
	bs.blob, bs.sum = newBlob()
	ln, err := c.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /blob", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(bs.blob)))
		out := io.Writer(w)
		if r.URL.Query().Get("pace") != "" {
			out = &pacedWriter{w: w, f: w.(http.Flusher)}
		}
		out.Write(bs.blob)
	})
	mux.HandleFunc("POST /upload", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
	})
	bs.srv = &http.Server{Handler: mux}
	go bs.srv.Serve(ln)
	t.Cleanup(func() { bs.srv.Close() })
	return bs
}

// paceRate is the pace of the paced transfers, ≈ 25 MiB/s: 64 MiB take
// ≈ 2.7 s, long enough for a burst of faults to land in the middle.
const (
	paceRate  = 25 << 20 // bytes per second
	paceChunk = 256 << 10
)

// pacer keeps a byte stream at paceRate from its first use on, whatever the
// sizes of the reads or writes.
type pacer struct {
	start time.Time
	n     int64
}

func (p *pacer) wait(n int) {
	if p.start.IsZero() {
		p.start = time.Now()
	}
	p.n += int64(n)
	due := p.start.Add(time.Duration(float64(p.n) / paceRate * float64(time.Second)))
	time.Sleep(time.Until(due))
}

type pacedWriter struct {
	w io.Writer
	f http.Flusher
	p pacer
}

func (p *pacedWriter) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		k := min(len(b), paceChunk)
		p.p.wait(k)
		m, err := p.w.Write(b[:k])
		n += m
		if err != nil {
			return n, err
		}
		p.f.Flush()
		b = b[k:]
	}
	return n, nil
}

// pacedReader is the upload's side of the pacing.
type pacedReader struct {
	r io.Reader
	p pacer
}

func (p *pacedReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b[:min(len(b), paceChunk)])
	p.p.wait(n)
	return n, err
}

// httpClientOn makes an HTTP client whose connections start on host h.
func httpClientOn(h *testenv.Host) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: h.DialContext, DisableCompression: true}}
}

// download fetches the blob and checks length and SHA-256.
func (bs *blobServer) download(ctx context.Context, c *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("download: %w", err)
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return fmt.Errorf("download: after %d bytes: %w", n, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != blobSize || got != bs.sum {
		return fmt.Errorf("download: got %d bytes sha256 %s, want %d bytes %s", n, got, blobSize, bs.sum)
	}
	return nil
}

// upload posts the blob and checks what the server says it read.
func (bs *blobServer) upload(ctx context.Context, c *http.Client, url string, paced bool) error {
	var body io.Reader = bytes.NewReader(bs.blob)
	if paced {
		body = &pacedReader{r: body}
	}
	req, err := http.NewRequestWithContext(ctx, "POST", url, body)
	if err != nil {
		return err
	}
	req.ContentLength = blobSize
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	defer resp.Body.Close()
	reply, err := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if err != nil {
		return fmt.Errorf("upload: read reply: %w", err)
	}
	if want := fmt.Sprintf("%d %s", blobSize, bs.sum); string(reply) != want {
		return fmt.Errorf("upload: server read %q, want %q", reply, want)
	}
	return nil
}

// TestE2EHTTP moves 64 MiB each way between A and C through usl0.
func TestE2EHTTP(t *testing.T) {
	l := newLab(t, labOpts{})
	bs := startBlobServer(t, l.C, net.JoinHostPort(addrC4, strconv.Itoa(httpPort)))
	base := fmt.Sprintf("http://%s:%d", addrC4, httpPort)
	c := httpClientOn(l.A)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	if err := bs.download(ctx, c, base+"/blob"); err != nil {
		t.Fatal(err)
	}
	t.Logf("download 64 MiB verified in %v", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if err := bs.upload(ctx, c, base+"/upload", false); err != nil {
		t.Fatal(err)
	}
	t.Logf("upload 64 MiB verified in %v", time.Since(start).Round(time.Millisecond))
}

// TestE2EHTTPUnderFaults repeats paced downloads and uploads, concurrently,
// while the A—B link suffers 10 TCP resets of the session's port and one
// 5 s blackhole. Every transfer must complete with the right bytes and no
// error; afterwards A's status must count the reconnects.
func TestE2EHTTPUnderFaults(t *testing.T) {
	l := newLab(t, labOpts{})
	bs := startBlobServer(t, l.C, net.JoinHostPort(addrC4, strconv.Itoa(httpPort)))
	base := fmt.Sprintf("http://%s:%d", addrC4, httpPort)
	c := httpClientOn(l.A)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	faultsDone := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[string]int{}
	loop := func(name string, xfer func() error) {
		defer wg.Done()
		// Keep transferring until the faults are over; the transfer that
		// straddles the end of the faults is the last one.
		for i := 0; i < 50; i++ {
			if err := xfer(); err != nil {
				t.Errorf("%s #%d: %v", name, i+1, err)
				return
			}
			mu.Lock()
			counts[name]++
			mu.Unlock()
			select {
			case <-faultsDone:
				return
			default:
			}
		}
	}
	wg.Add(2)
	go loop("download", func() error { return bs.download(ctx, c, base+"/blob?pace=1") })
	go loop("upload", func() error { return bs.upload(ctx, c, base+"/upload", true) })

	time.Sleep(500 * time.Millisecond)
	for i := range 10 {
		l.AB.ResetTCP(sessionPort)
		time.Sleep(time.Duration(30+i*10) * time.Millisecond)
		l.AB.Heal()
		time.Sleep(250 * time.Millisecond)
	}
	l.AB.Blackhole()
	time.Sleep(5 * time.Second)
	l.AB.Heal()
	close(faultsDone)
	wg.Wait()
	t.Logf("verified transfers: %v", counts)

	r, err := l.status(l.A)
	if err != nil {
		t.Fatal(err)
	}
	if r.Session == nil || r.Session.Reconnects == 0 {
		t.Fatalf("status --json after 10 resets and a blackhole: session %+v, want reconnects > 0", r.Session)
	}
	t.Logf("A's status: state %s, reconnects %d, retransmitted %d bytes", r.Session.State, r.Session.Reconnects, r.Session.RetransmittedBytes)
}
