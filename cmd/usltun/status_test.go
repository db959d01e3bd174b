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
