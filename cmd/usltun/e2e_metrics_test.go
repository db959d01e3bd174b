package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/usltun/usltun/tools/loadgen"
)

const metricsAddr = "127.0.0.1:9108" // inside A's namespace

// TestE2EMetrics scrapes A's --metrics during a verified transfer across TCP
// resets of the session's path and after it: the byte counters moved, the
// reconnects and retransmissions show, the labels are the peer's, and the
// text passes promtool check metrics. A's status shows the latest handshake
// and the transfer like wg show.
func TestE2EMetrics(t *testing.T) {
	p := newPartition(t, scenario{name: "metrics"}, labOpts{
		aFlags: []string{"--metrics", metricsAddr, "--peer-name", "gateway-b"},
		bFlags: []string{"--metrics", metricsAddr},
	})
	scrapeOn := func(client *http.Client) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+metricsAddr+"/metrics", nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("scrape: %v", err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("scrape: %s, %v", resp.Status, err)
		}
		return string(b)
	}
	clientA := httpClientOn(p.A)
	scrape := func() string { t.Helper(); return scrapeOn(clientA) }
	labels := fmt.Sprintf(`{device="usl0",name="gateway-b",public_key="%s"}`, p.bPub)

	run := p.start(loadgen.Config{Flows: 2, Duration: 6 * time.Second})
	time.Sleep(time.Second)
	// A reset alone may catch the dialer with nothing in flight (it then
	// retransmits nothing), so the first fault is certain to lose data: the
	// path goes silent while A sends, then a reset kills the connection
	// with those bytes unacknowledged. The reset stays on past TCP's first
	// retransmission timeouts so neither end's socket survives it.
	p.AB.Blackhole()
	time.Sleep(300 * time.Millisecond)
	p.AB.ResetTCP(sessionPort)
	time.Sleep(time.Second)
	p.AB.Heal()
	time.Sleep(400 * time.Millisecond)
	for i := range 4 {
		p.AB.ResetTCP(sessionPort)
		time.Sleep(time.Duration(30+10*i) * time.Millisecond)
		p.AB.Heal()
		time.Sleep(400 * time.Millisecond)
	}
	during := scrape()
	rep := p.verify(run, 40*time.Second, "bulk across a silent path reset and 4 resets")
	after := scrape()

	value := func(text, name string) float64 {
		t.Helper()
		v, ok := sample(text, name+labels)
		if !ok {
			t.Fatalf("no sample %s%s in:\n%s", name, labels, text)
		}
		return v
	}
	for _, name := range []string{"usltun_peer_transmit_bytes_total", "usltun_peer_receive_bytes_total"} {
		d, a := value(during, name), value(after, name)
		if d <= 0 || a <= d {
			t.Errorf("%s: %v during, %v after; want > 0 and growing", name, d, a)
		}
	}
	if up := value(after, "usltun_peer_transmit_bytes_total"); up < float64(rep.BytesUp) {
		t.Errorf("transmit_bytes_total %v < the %d bytes loadgen sent up", up, rep.BytesUp)
	}
	if v := value(after, "usltun_peer_reconnects_total"); v < 1 {
		t.Errorf("reconnects_total %v after 5 faults, want ≥ 1", v)
	}
	if v := value(after, "usltun_peer_retransmitted_bytes_total"); v <= 0 {
		t.Errorf("retransmitted_bytes_total %v after a silent path was reset mid-transfer, want > 0", v)
	}
	if v, ok := sample(after, `usltun_peer_state{device="usl0",name="gateway-b",public_key="`+p.bPub+`",state="up"}`); !ok || v != 1 {
		t.Errorf("state up = %v (%v)", v, ok)
	}
	if _, ok := sample(after, `usltun_flows{device="usl0",proto="tcp"}`); !ok {
		t.Errorf("no usltun_flows for tcp")
	}
	if v := value(after, "usltun_peer_last_handshake_seconds"); time.Since(time.Unix(int64(v), 0)) > time.Minute {
		t.Errorf("last_handshake_seconds %v is not recent", v)
	}

	var ours []string
	for _, line := range strings.Split(after, "\n") {
		if strings.HasPrefix(line, "usltun_") {
			ours = append(ours, line)
		}
	}
	t.Logf("usltun's own samples after the transfer:\n%s", strings.Join(ours, "\n"))

	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not installed (make deps installs Debian's prometheus package)")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(after)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out.String())
	}

	// B, the listener, counts refused handshakes by reason: three
	// connections from A that send garbage instead of a first message.
	for range 3 {
		c, err := p.A.Dial("tcp", net.JoinHostPort(addrB4, strconv.Itoa(sessionPort)))
		if err != nil {
			t.Fatal(err)
		}
		c.Write(make([]byte, 512))
		c.Close()
	}
	clientB := httpClientOn(p.B)
	var garbage float64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && garbage < 3; time.Sleep(50 * time.Millisecond) {
		garbage, _ = sample(scrapeOn(clientB), `usltun_handshake_rejections_total{device="usl0",reason="garbage"}`)
	}
	if garbage < 3 {
		t.Errorf("B's usltun_handshake_rejections_total{reason=\"garbage\"} = %v after 3 garbage connections, want ≥ 3", garbage)
	}

	text, err := p.A.Run(e2eBinary, "status")
	if err != nil {
		t.Fatalf("status: %v: %s", err, text)
	}
	for _, want := range []string{"latest handshake: ", " ago\n", "transfer:", " received, "} {
		if !strings.Contains(text, want) {
			t.Errorf("status lacks %q:\n%s", want, text)
		}
	}
	t.Logf("A's status:\n%s", text)
}

// sample finds the sample whose name and labels are exactly series.
func sample(text, series string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(line, series+" ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
		return v, err == nil
	}
	return 0, false
}
