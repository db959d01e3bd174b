package usl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"syscall"
	"time"
)

// Config configures both ends of a session. The zero value of every tuning
// field means "use the default" listed next to it.
type Config struct {
	PrivateKey PrivateKey
	// PeerKeys is the allowlist: a handshake from any other static key is
	// rejected. Dial uses PeerKeys[0] as the listener's key (Noise IK needs
	// it before the first byte is sent).
	PeerKeys []PublicKey

	ReplayBuffer      int           // bytes of unacked stream data per session; default 32 MiB
	StreamWindow      int           // per-stream credit window; default 256 KiB
	MaxStreams        int           // open streams per session; default 4096
	MaxFrame          int           // largest data payload per frame; default 64 KiB
	AckDelay          time.Duration // longest an ack waits for a frame to ride on; default 10 ms
	KeepaliveInterval time.Duration // ping period per path; default 500 ms
	DeadInterval      time.Duration // a path silent this long is dead; default 2 s
	ReconnectMin      time.Duration // first redial delay; default 50 ms
	ReconnectMax      time.Duration // redial delay cap; default 1 s
	SessionTimeout    time.Duration // give up after this long without a path; 0: never
	HandshakeTimeout  time.Duration // default 5 s
	HandshakeRate     float64       // handshakes per second per source IP (listener); default 10, burst 2x

	// Dial opens a path. nil: a net.Dialer with Control and TCP_NODELAY.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Control runs on every socket the default dialer and Listen create,
	// so the daemon can set SO_MARK or SO_BINDTODEVICE and keep its own
	// traffic off the tunnel.
	Control func(network, address string, c syscall.RawConn) error
	Logger  *slog.Logger

	// epoch overrides the process epoch; tests use it to play a restarted
	// peer inside one process.
	epoch uint64
}

// Defaults. Each one is a trade-off explained where it is used.
const (
	DefaultReplayBuffer      = 32 << 20
	DefaultStreamWindow      = 256 << 10
	DefaultMaxStreams        = 4096
	DefaultMaxFrame          = 64 << 10
	DefaultAckDelay          = 10 * time.Millisecond
	DefaultKeepaliveInterval = 500 * time.Millisecond
	DefaultDeadInterval      = 2 * time.Second
	DefaultReconnectMin      = 50 * time.Millisecond
	DefaultReconnectMax      = time.Second
	DefaultHandshakeTimeout  = 5 * time.Second
	DefaultHandshakeRate     = 10

	// maxFrameLimit bounds MaxFrame: the length field could say 4 GiB, but
	// a receiver allocates a payload buffer before it can authenticate the
	// whole frame, so the bound is part of the defence against garbage.
	maxFrameLimit = 1 << 20
	// maxDescriptor bounds an OPEN payload.
	maxDescriptor = 1024
	// closeWait bounds how long Close waits for the peer to ack what was
	// written before it.
	closeWait = 5 * time.Second
)

func (c Config) withDefaults() (Config, error) {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defd := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.ReplayBuffer, DefaultReplayBuffer)
	def(&c.StreamWindow, DefaultStreamWindow)
	def(&c.MaxStreams, DefaultMaxStreams)
	def(&c.MaxFrame, DefaultMaxFrame)
	defd(&c.AckDelay, DefaultAckDelay)
	defd(&c.KeepaliveInterval, DefaultKeepaliveInterval)
	defd(&c.DeadInterval, DefaultDeadInterval)
	defd(&c.ReconnectMin, DefaultReconnectMin)
	defd(&c.ReconnectMax, DefaultReconnectMax)
	defd(&c.HandshakeTimeout, DefaultHandshakeTimeout)
	if c.HandshakeRate <= 0 {
		c.HandshakeRate = DefaultHandshakeRate
	}
	if c.ReconnectMax < c.ReconnectMin {
		c.ReconnectMax = c.ReconnectMin
	}
	if c.MaxFrame > maxFrameLimit {
		return c, fmt.Errorf("usl: MaxFrame %d above the limit %d", c.MaxFrame, maxFrameLimit)
	}
	if c.StreamWindow > 1<<30 || c.ReplayBuffer > 1<<40 {
		return c, errors.New("usl: StreamWindow or ReplayBuffer unreasonably large")
	}
	if c.PrivateKey == (PrivateKey{}) {
		return c, errors.New("usl: Config.PrivateKey is not set")
	}
	if len(c.PeerKeys) == 0 {
		return c, errors.New("usl: Config.PeerKeys is empty: no peer could ever be allowed")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.epoch == 0 {
		c.epoch = processEpoch()
	}
	return c, nil
}

func (c *Config) allowed(k PublicKey) bool {
	for _, p := range c.PeerKeys {
		if p == k {
			return true
		}
	}
	return false
}
