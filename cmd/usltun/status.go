package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/usltun/usltun/internal/human"
	"github.com/usltun/usltun/netstack"
	"github.com/usltun/usltun/usl"
)

// statusReport is the control socket's document: `usltun status --json`
// prints it as is, and scripts depend on its field names.
type statusReport struct {
	Version  string         `json:"version"`
	PID      int            `json:"pid"`
	UptimeS  float64        `json:"uptime_s"`
	Mode     string         `json:"mode"` // "dial" or "listen"
	Address  string         `json:"address"`
	PeerKey  string         `json:"peer_key"`
	Device   string         `json:"device,omitempty"`
	MTU      int            `json:"mtu,omitempty"`
	Offloads string         `json:"offloads,omitempty"`
	Routes   []string       `json:"routes"`
	Exports  []string       `json:"exports"`
	Session  *sessionReport `json:"session"` // null until a peer first connects to a listener
	Flows    flowReport     `json:"flows"`
	// Front ends without a device: where the proxies listen, and how many
	// `usltun exec` namespaces are attached.
	Socks     string `json:"socks,omitempty"`
	HTTPProxy string `json:"http_proxy,omitempty"`
	Execs     int    `json:"exec_namespaces"`
	// Policy counts the open flows per class and scheduler.
	Policy []classReport `json:"policy"`
	// Hub is true when the peers come from [[peer]] sections; Peers has
	// one entry per peer either way, the most recent handshake first.
	Hub   bool         `json:"hub"`
	Peers []peerReport `json:"peers"`
}

// peerReport is one peer of the table: `usltun status` prints a block of
// it, `usltun status NAME` only that block.
type peerReport struct {
	Name      string         `json:"name"`
	PublicKey string         `json:"public_key"`
	Endpoints []string       `json:"endpoints"` // empty: the peer dials in
	Routes    []string       `json:"routes"`
	Exports   []string       `json:"exports"`
	Flows     int            `json:"flows"`
	MaxFlows  int            `json:"max_flows"` // 0: no per-peer bound
	Session   *sessionReport `json:"session"`   // null until the peer first connects
}

type sessionReport struct {
	State              string  `json:"state"`
	ID                 string  `json:"id"`
	Path               string  `json:"path"`
	RTTMs              float64 `json:"rtt_ms"`
	BytesIn            uint64  `json:"bytes_in"`
	BytesOut           uint64  `json:"bytes_out"`
	UnackedBytes       int     `json:"unacked_bytes"`
	RetransmittedBytes uint64  `json:"retransmitted_bytes"`
	Reconnects         uint64  `json:"reconnects"`
	Fences             uint64  `json:"fences"`
	Streams            int     `json:"streams"`
	LastError          string  `json:"last_error"`
	// LastHandshake is when the latest path completed its handshake (RFC
	// 3339, UTC), empty before the first; LastHandshakeAgoS is its age in
	// seconds when the status was taken.
	LastHandshake     string  `json:"last_handshake,omitempty"`
	LastHandshakeAgoS float64 `json:"last_handshake_ago_s,omitempty"`
	// Scheduler is the default for flows without a policy; Paths has one
	// entry per path (usltun status prints one line each).
	Scheduler string       `json:"scheduler"`
	Paths     []pathReport `json:"paths"`
}

// pathReport is one path of the session.
type pathReport struct {
	ID              uint32  `json:"id"`
	Local           string  `json:"local"`
	Remote          string  `json:"remote"`
	State           string  `json:"state"`
	SRTTMs          float64 `json:"srtt_ms"`
	RTTVarMs        float64 `json:"rttvar_ms"`
	RateBps         float64 `json:"rate_bytes_per_s"`
	InFlightBytes   int     `json:"in_flight_bytes"`
	QueuedBytes     int     `json:"queued_bytes"`
	WindowBytes     int     `json:"window_bytes"`
	BytesSent       uint64  `json:"bytes_sent"`
	BytesReceived   uint64  `json:"bytes_received"`
	ReinjectedBytes uint64  `json:"reinjected_bytes"`
	Stalls          uint64  `json:"stalls"`
	LastError       string  `json:"last_error"`
}

type flowReport struct {
	TCP             int    `json:"tcp"`
	UDP             int    `json:"udp"`
	ICMP            int    `json:"icmp"`
	PendingConnects int    `json:"pending_connects"`
	RefusedByLimit  uint64 `json:"refused_by_limit"`
	DialErrors      uint64 `json:"dial_errors"`
}

func (d *daemon) status() any {
	c := d.cmd
	r := statusReport{
		Version: version,
		PID:     os.Getpid(),
		UptimeS: time.Since(d.started).Seconds(),
		Mode:    "dial",
		Address: c.address(),
		Routes:  strings.Split(prefixes(d.deviceRoutes()), ","),
		Exports: strings.Split(prefixes(c.Export), ","),
		Hub:     c.hubMode,
		Peers:   []peerReport{},
	}
	if ps := d.hub.Table().Peers(); len(ps) > 0 {
		r.PeerKey = ps[0].Key.String()
	}
	if len(c.Listen) > 0 {
		r.Mode = "listen"
	}
	if r.Routes[0] == "" {
		r.Routes = []string{}
	}
	if len(c.Export) == 0 {
		r.Exports = []string{}
	}
	if d.dev != nil {
		r.Device, r.MTU, r.Offloads = d.dev.Name(), c.MTU, d.dev.Offloads()
	}
	for _, l := range d.hub.Peers() {
		p := l.Peer()
		pr := peerReport{Name: p.Name, PublicKey: p.Key.String(), Endpoints: []string{}, Routes: prefixList(p.Routes),
			Exports: prefixList(p.Exports), Flows: l.Flows(), MaxFlows: p.Limits.MaxFlows}
		for _, ep := range p.Endpoints {
			pr.Endpoints = append(pr.Endpoints, ep.String())
		}
		if s := l.Session(); s != nil {
			pr.Session = newSessionReport(s.Stats())
			pr.Session.Scheduler = c.Scheduler
		}
		r.Peers = append(r.Peers, pr)
	}
	if !c.hubMode && len(r.Peers) == 1 {
		r.Session = r.Peers[0].Session
	}
	if d.stack != nil {
		r.Flows = newFlowReport(d.stack.Stats())
	}
	if d.socks != nil {
		r.Socks = d.socks.Addr().String()
	}
	if d.http != nil {
		r.HTTPProxy = d.http.Addr().String()
	}
	d.execs.mu.Lock()
	r.Execs = len(d.execs.m)
	d.execs.mu.Unlock()
	r.Policy = []classReport{}
	if d.policy != nil {
		r.Policy = d.policy.report()
	}
	return r
}

func newSessionReport(st usl.Stats) *sessionReport {
	r := &sessionReport{
		State:              st.State.String(),
		ID:                 st.SessionID,
		Path:               st.Remote,
		RTTMs:              float64(st.RTT.Microseconds()) / 1000,
		BytesIn:            st.BytesIn,
		BytesOut:           st.BytesOut,
		UnackedBytes:       st.Unacked,
		RetransmittedBytes: st.Retransmitted,
		Reconnects:         st.Reconnects,
		Fences:             st.Fences,
		Streams:            st.Streams,
		LastError:          st.LastError,
	}
	r.Paths = []pathReport{}
	for _, p := range st.Paths {
		r.Paths = append(r.Paths, pathReport{ID: p.ID, Local: p.Local, Remote: p.Remote, State: p.State.String(),
			SRTTMs: float64(p.SRTT.Microseconds()) / 1000, RTTVarMs: float64(p.RTTVar.Microseconds()) / 1000,
			RateBps: p.Rate, InFlightBytes: p.InFlight, QueuedBytes: p.Queued, WindowBytes: p.Window, BytesSent: p.BytesSent, BytesReceived: p.BytesReceived,
			ReinjectedBytes: p.Reinjected, Stalls: p.Stalls, LastError: p.LastError})
	}
	if !st.LastHandshake.IsZero() {
		r.LastHandshake = st.LastHandshake.UTC().Format(time.RFC3339Nano)
		r.LastHandshakeAgoS = time.Since(st.LastHandshake).Seconds()
	}
	return r
}

func newFlowReport(st netstack.Stats) flowReport {
	return flowReport{
		TCP:             st.TCPFlows,
		UDP:             st.UDPFlows,
		ICMP:            st.ICMPFlows,
		PendingConnects: st.PendingConnects,
		RefusedByLimit:  st.RefusedByLimit,
		DialErrors:      st.DialErrors,
	}
}

type statusCmd struct {
	Name    string `arg:"" optional:"" help:"Show only this peer (its name or public key)."`
	JSON    bool   `help:"Print the status as JSON."`
	Tun     string `default:"usl0" help:"Device name of the daemon to ask."`
	Control string `placeholder:"PATH" help:"Control socket (default: @usltun/<tun> for root, $XDG_RUNTIME_DIR/usltun/<tun>.sock for a user)."`
}

func (c *statusCmd) Run(o cmdIO) error {
	path, err := controlPath(c.Control, c.Tun)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	b, err := queryControl(ctx, path)
	if err != nil {
		return err
	}
	if c.JSON && c.Name == "" {
		_, err := o.stdout.Write(b)
		return err
	}
	var r statusReport
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("daemon on %s sent a status this build cannot read (version mismatch?): %w", path, err)
	}
	if c.Name != "" {
		pr, err := r.peer(c.Name)
		if err != nil {
			return err
		}
		if c.JSON {
			return json.NewEncoder(o.stdout).Encode(pr)
		}
		renderPeer(o.stdout, pr)
		return nil
	}
	if r.Hub {
		renderHub(o.stdout, &r)
		return nil
	}
	renderStatus(o.stdout, &r)
	return nil
}

// peer finds a peer by name or public key.
func (r *statusReport) peer(name string) (*peerReport, error) {
	var names []string
	for i := range r.Peers {
		if r.Peers[i].Name == name || r.Peers[i].PublicKey == name {
			return &r.Peers[i], nil
		}
		names = append(names, r.Peers[i].Name)
	}
	return nil, fmt.Errorf("no peer %q: the daemon has %s", name, strings.Join(names, ", "))
}

// renderHub prints the daemon, then one block per peer, as wg show does.
func renderHub(w io.Writer, r *statusReport) {
	p := func(k, f string, a ...any) { fmt.Fprintf(w, "%-17s "+f+"\n", append([]any{k + ":"}, a...)...) }
	p("hub", "%d peers, listening on %s", len(r.Peers), orDash(r.Address))
	if r.Device != "" {
		p("device", "%s, mtu %d, offloads %s, routes %s", r.Device, r.MTU, r.Offloads, strings.Join(r.Routes, ", "))
	}
	p("daemon", "pid %d, up %s, usltun %s", r.PID, (time.Duration(r.UptimeS) * time.Second).String(), r.Version)
	for i := range r.Peers {
		fmt.Fprintln(w)
		renderPeer(w, &r.Peers[i])
	}
}

// renderPeer prints one peer's block.
func renderPeer(w io.Writer, pr *peerReport) {
	p := func(k, f string, a ...any) { fmt.Fprintf(w, "  %-17s "+f+"\n", append([]any{k + ":"}, a...)...) }
	fmt.Fprintf(w, "peer: %s\n", pr.Name)
	p("public key", "%s", pr.PublicKey)
	if len(pr.Endpoints) > 0 {
		p("endpoints", "%s", strings.Join(pr.Endpoints, ", "))
	}
	if len(pr.Routes) > 0 {
		p("routes", "%s", strings.Join(pr.Routes, ", "))
	}
	if len(pr.Exports) > 0 {
		p("exports", "%s", strings.Join(pr.Exports, ", "))
	} else {
		p("exports", "none")
	}
	s := pr.Session
	if s == nil {
		p("session", "never connected")
		p("flows", "%s", flowsLine(pr))
		return
	}
	p("session", "%s (id %s)", s.State, s.ID)
	for _, ph := range s.Paths {
		p("path", "%s → %s, %s, srtt %.2f ms", orDash(ph.Local), ph.Remote, ph.State, ph.SRTTMs)
	}
	if s.LastHandshake != "" {
		p("latest handshake", "%s ago", human.Age(time.Duration(s.LastHandshakeAgoS*float64(time.Second))))
	}
	p("transfer", "%s received, %s sent", human.Bytes(int64(s.BytesIn)), human.Bytes(int64(s.BytesOut)))
	p("reliability", "%d reconnects, %d fences, %s retransmitted", s.Reconnects, s.Fences, human.Bytes(int64(s.RetransmittedBytes)))
	p("flows", "%s, %d streams", flowsLine(pr), s.Streams)
}

func flowsLine(pr *peerReport) string {
	if pr.MaxFlows == 0 {
		return fmt.Sprintf("%d open", pr.Flows)
	}
	return fmt.Sprintf("%d open (max %d)", pr.Flows, pr.MaxFlows)
}

func prefixList(ps []netip.Prefix) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

func renderStatus(w io.Writer, r *statusReport) {
	p := func(k, f string, a ...any) { fmt.Fprintf(w, "%-17s "+f+"\n", append([]any{k + ":"}, a...)...) }
	p("peer", "%s (%s)", r.Address, r.Mode)
	p("peer key", "%s", r.PeerKey)
	if s := r.Session; s == nil {
		p("session", "waiting for the peer to connect")
	} else {
		p("session", "%s (id %s)", s.State, s.ID)
		if s.Path != "" {
			p("path", "%s, rtt %.2f ms", s.Path, s.RTTMs)
		}
		if s.Scheduler != "" {
			p("scheduler", "%s", s.Scheduler)
		}
		for _, ph := range s.Paths {
			line := fmt.Sprintf("%s → %s, %s, srtt %.2f ms, %s sent, %s received, %s reinjected",
				orDash(ph.Local), ph.Remote, ph.State, ph.SRTTMs, human.Bytes(int64(ph.BytesSent)),
				human.Bytes(int64(ph.BytesReceived)), human.Bytes(int64(ph.ReinjectedBytes)))
			if ph.LastError != "" {
				line += ", last error: " + ph.LastError
			}
			p("  path", "%s", line)
		}
		if s.LastHandshake != "" {
			p("latest handshake", "%s ago", human.Age(time.Duration(s.LastHandshakeAgoS*float64(time.Second))))
		}
		p("transfer", "%s received, %s sent", human.Bytes(int64(s.BytesIn)), human.Bytes(int64(s.BytesOut)))
		p("reliability", "%s unacked, %s retransmitted, %d reconnects, %d fences",
			human.Bytes(int64(s.UnackedBytes)), human.Bytes(int64(s.RetransmittedBytes)), s.Reconnects, s.Fences)
		if s.LastError != "" {
			p("last error", "%s", s.LastError)
		}
		p("streams", "%d open", s.Streams)
	}
	if r.Device != "" {
		p("device", "%s, mtu %d, offloads %s", r.Device, r.MTU, r.Offloads)
		p("routes", "%s", strings.Join(r.Routes, ", "))
		p("flows", "%d tcp, %d udp, %d icmp, %d connecting, %d refused at --max-flows, %d dial errors",
			r.Flows.TCP, r.Flows.UDP, r.Flows.ICMP, r.Flows.PendingConnects, r.Flows.RefusedByLimit, r.Flows.DialErrors)
	}
	for _, c := range r.Policy {
		p("  class", "%s: %d flows on %s", c.Class, c.Flows, c.Scheduler)
	}
	if len(r.Exports) > 0 {
		p("exports", "%s", strings.Join(r.Exports, ", "))
	} else {
		p("exports", "none")
	}
	if r.Socks != "" || r.HTTPProxy != "" || r.Execs > 0 {
		p("front ends", "%s", frontEnds(r))
	}
	p("daemon", "pid %d, up %s, usltun %s", r.PID, (time.Duration(r.UptimeS) * time.Second).String(), r.Version)
}

func frontEnds(r *statusReport) string {
	var fe []string
	if r.Socks != "" {
		fe = append(fe, "socks "+r.Socks)
	}
	if r.HTTPProxy != "" {
		fe = append(fe, "http-proxy "+r.HTTPProxy)
	}
	if r.Execs > 0 {
		fe = append(fe, fmt.Sprintf("%d exec namespaces", r.Execs))
	}
	return strings.Join(fe, ", ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
