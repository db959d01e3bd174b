package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/usltun/usltun/hub"
	"github.com/usltun/usltun/usl"
)

// The metrics endpoint (--metrics ADDR) serves Prometheus text at /metrics.
// Nothing is counted for it: a scrape reads the counters the session and the
// netstack keep anyway (the same snapshots `usltun status` prints), so
// serving metrics adds nothing to the data path. Names follow Prometheus'
// conventions and the labels of mdlayher/wireguard_exporter: public_key is
// the peer's key, name the peer's --peer-name, device the TUN device.

var (
	peerLabels = []string{"device", "public_key", "name"}

	mReceive       = prometheus.NewDesc("usltun_peer_receive_bytes_total", "Stream payload bytes received from the peer, in order.", peerLabels, nil)
	mTransmit      = prometheus.NewDesc("usltun_peer_transmit_bytes_total", "Stream payload bytes written to the peer by applications.", peerLabels, nil)
	mRetransmitted = prometheus.NewDesc("usltun_peer_retransmitted_bytes_total", "Frame bytes sent again after a reconnect.", peerLabels, nil)
	mReconnects    = prometheus.NewDesc("usltun_peer_reconnects_total", "Paths attached after the session's first.", peerLabels, nil)
	mFences        = prometheus.NewDesc("usltun_peer_fences_total", "Times the peer was found restarted and its old streams failed.", peerLabels, nil)
	mHandshake     = prometheus.NewDesc("usltun_peer_last_handshake_seconds", "Unix time of the latest completed handshake (0 before the first).", peerLabels, nil)
	mState         = prometheus.NewDesc("usltun_peer_state", "1 for the session's current state, 0 for the others.", append(peerLabels[:3:3], "state"), nil)
	mStreams       = prometheus.NewDesc("usltun_peer_streams", "Open streams of the session.", peerLabels, nil)
	mReplayUsed    = prometheus.NewDesc("usltun_peer_replay_buffer_bytes", "Unacknowledged bytes held for retransmission.", peerLabels, nil)
	mReplayLimit   = prometheus.NewDesc("usltun_peer_replay_buffer_limit_bytes", "The replay buffer's bound (--replay-buffer); writers block at it.", peerLabels, nil)
	mPathUp        = prometheus.NewDesc("usltun_path_up", "1 while a path to the peer is attached; remote is its address.", append(peerLabels[:3:3], "remote"), nil)
	mSRTT          = prometheus.NewDesc("usltun_path_srtt_seconds", "Smoothed round-trip time of the active path.", append(peerLabels[:3:3], "remote"), nil)
	mFlows         = prometheus.NewDesc("usltun_flows", "Open flows through the TUN device, by protocol.", []string{"device", "proto"}, nil)
	mPending       = prometheus.NewDesc("usltun_flows_pending_connects", "TCP connects waiting for the far side's dial.", []string{"device"}, nil)
	mRefused       = prometheus.NewDesc("usltun_flows_refused_total", "Flows refused at --max-flows.", []string{"device"}, nil)
	mDialErrors    = prometheus.NewDesc("usltun_flows_dial_errors_total", "Flows whose far side could not reach the destination.", []string{"device"}, nil)
	mRejections    = prometheus.NewDesc("usltun_handshake_rejections_total", "Handshakes the listener refused, by reason (garbage, unknown key, rate limit, replayed first message, ...).", []string{"device", "reason"}, nil)
	mInfo          = prometheus.NewDesc("usltun_info", "Always 1; labels give the version and the USL protocol version.", []string{"version", "protocol"}, nil)
)

var allStates = []usl.SessionState{usl.Connecting, usl.Up, usl.Reconnecting, usl.Fenced, usl.Closed}

// daemonCollector turns the daemon's snapshots into metrics at scrape time.
type daemonCollector struct{ d *daemon }

var _ prometheus.Collector = daemonCollector{}

func (c daemonCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mReceive, mTransmit, mRetransmitted, mReconnects, mFences, mHandshake, mState,
		mStreams, mReplayUsed, mReplayLimit, mPathUp, mSRTT, mFlows, mPending, mRefused, mDialErrors, mRejections, mInfo} {
		ch <- d
	}
}

func (c daemonCollector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	dev := d.cmd.Tun
	ch <- prometheus.MustNewConstMetric(mInfo, prometheus.GaugeValue, 1, version, fmt.Sprint(usl.ProtocolVersion))
	for _, l := range d.hub.Peers() {
		s := l.Session()
		if s == nil {
			continue
		}
		st := s.Stats()
		lv := []string{dev, st.PeerKey.String(), d.metricsName(l.Peer())}
		counter := func(desc *prometheus.Desc, v uint64) {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), lv...)
		}
		gauge := func(desc *prometheus.Desc, v float64, extra ...string) {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, append(lv[:3:3], extra...)...)
		}
		counter(mReceive, st.BytesIn)
		counter(mTransmit, st.BytesOut)
		counter(mRetransmitted, st.Retransmitted)
		counter(mReconnects, st.Reconnects)
		counter(mFences, st.Fences)
		hs := 0.0
		if !st.LastHandshake.IsZero() {
			hs = float64(st.LastHandshake.UnixNano()) / 1e9
		}
		gauge(mHandshake, hs)
		for _, state := range allStates {
			v := 0.0
			if state == st.State {
				v = 1
			}
			gauge(mState, v, state.String())
		}
		gauge(mStreams, float64(st.Streams))
		gauge(mReplayUsed, float64(st.Unacked))
		gauge(mReplayLimit, float64(l.Peer().Limits.ReplayBuffer))
		if st.Remote != "" {
			gauge(mPathUp, 1, st.Remote)
			gauge(mSRTT, st.RTT.Seconds(), st.Remote)
		}
	}
	if d.ln != nil {
		for reason, n := range d.ln.Rejections() {
			ch <- prometheus.MustNewConstMetric(mRejections, prometheus.CounterValue, float64(n), dev, reason)
		}
	}
	if d.stack != nil {
		fs := d.stack.Stats()
		ch <- prometheus.MustNewConstMetric(mFlows, prometheus.GaugeValue, float64(fs.TCPFlows), dev, "tcp")
		ch <- prometheus.MustNewConstMetric(mFlows, prometheus.GaugeValue, float64(fs.UDPFlows), dev, "udp")
		ch <- prometheus.MustNewConstMetric(mFlows, prometheus.GaugeValue, float64(fs.ICMPFlows), dev, "icmp")
		ch <- prometheus.MustNewConstMetric(mPending, prometheus.GaugeValue, float64(fs.PendingConnects), dev)
		ch <- prometheus.MustNewConstMetric(mRefused, prometheus.CounterValue, float64(fs.RefusedByLimit), dev)
		ch <- prometheus.MustNewConstMetric(mDialErrors, prometheus.CounterValue, float64(fs.DialErrors), dev)
	}
}

// metricsServer serves /metrics until Close.
type metricsServer struct {
	srv  *http.Server
	done chan struct{}
}

func listenMetrics(addr string, d *daemon, log *slog.Logger) (*metricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("--metrics %s: the port is in use; pick a free one", addr)
		}
		return nil, fmt.Errorf("--metrics %s: %w", addr, err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(daemonCollector{d},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	m := &metricsServer{
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		done: make(chan struct{}),
	}
	go func() {
		defer close(m.done)
		m.srv.Serve(ln)
	}()
	log.Info("serving metrics", "addr", ln.Addr().String(), "path", "/metrics")
	return m, nil
}

func (m *metricsServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := m.srv.Shutdown(ctx)
	<-m.done
	return err
}

// metricsName is a peer's name label: its [[peer]] name, or for the
// command line's one peer --peer-name (empty when not given).
func (d *daemon) metricsName(p *hub.Peer) string {
	if d.cmd.hubMode {
		return p.Name
	}
	return d.cmd.PeerName
}
