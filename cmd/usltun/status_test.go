package main

import (
	"strings"
	"testing"
	"time"

	"github.com/usltun/usltun/usl"
)

// status reads like wg show: the latest handshake's age and the transfer.
func TestStatusLikeWgShow(t *testing.T) {
	st := usl.Stats{State: usl.Up, BytesIn: 1536, BytesOut: 3 << 30, LastHandshake: time.Now().Add(-62 * time.Second)}
	r := &statusReport{Mode: "dial", Address: "10.0.0.2:7400", Session: newSessionReport(st)}
	var b strings.Builder
	renderStatus(&b, r)
	for _, want := range []string{
		"latest handshake: 1 minute, 2 seconds ago\n",
		"transfer:         1.5 KiB received, 3.00 GiB sent\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, b.String())
		}
	}
	if r.Session.LastHandshake == "" || r.Session.LastHandshakeAgoS < 61 || r.Session.LastHandshakeAgoS > 70 {
		t.Errorf("JSON: last_handshake %q, ago %v s", r.Session.LastHandshake, r.Session.LastHandshakeAgoS)
	}
	// Before any handshake there is no such line.
	r.Session = newSessionReport(usl.Stats{State: usl.Connecting})
	b.Reset()
	renderStatus(&b, r)
	if strings.Contains(b.String(), "handshake") {
		t.Errorf("a handshake shown before any:\n%s", b.String())
	}
}

// A hub's status is one block per peer; `status NAME` finds one by name or
// key and names the peers there are when it finds none.
func TestStatusHubBlocks(t *testing.T) {
	up := newSessionReport(usl.Stats{State: usl.Up, BytesIn: 2048, Reconnects: 3, Fences: 1, LastHandshake: time.Now().Add(-5 * time.Second)})
	r := &statusReport{Hub: true, Address: "0.0.0.0:7400", Peers: []peerReport{
		{Name: "anna", PublicKey: "KEY-A", Routes: []string{"10.30.1.0/24"}, Exports: []string{"10.20.5.0/24"}, Flows: 2, MaxFlows: 4096, Session: up},
		{Name: "sensor", PublicKey: "KEY-S", Endpoints: []string{"198.51.100.7:7400"}, MaxFlows: 4096},
	}}
	var b strings.Builder
	renderHub(&b, r)
	out := b.String()
	for _, want := range []string{
		"hub:              2 peers, listening on 0.0.0.0:7400\n",
		"peer: anna\n  public key:       KEY-A\n  routes:           10.30.1.0/24\n  exports:          10.20.5.0/24\n  session:          up",
		"  latest handshake: 5 seconds ago\n",
		"  reliability:      3 reconnects, 1 fences",
		"  flows:            2 open (max 4096), 0 streams\n",
		"peer: sensor\n  public key:       KEY-S\n  endpoints:        198.51.100.7:7400\n  exports:          none\n  session:          never connected\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("hub status lacks %q:\n%s", want, out)
		}
	}
	if p, err := r.peer("KEY-S"); err != nil || p.Name != "sensor" {
		t.Errorf("peer by key: %v, %v", p, err)
	}
	if _, err := r.peer("bob"); err == nil || !strings.Contains(err.Error(), `no peer "bob": the daemon has anna, sensor`) {
		t.Errorf("unknown peer: %v", err)
	}
}
