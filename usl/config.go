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
	// Allow, when set, is the listener's allowlist instead of PeerKeys,
	// asked once per handshake: a daemon with a peer table swaps the table
	// under it, so a reload admits added keys and refuses removed ones
	// without a new listener. It must be cheap and safe for concurrent use.
	Allow func(PublicKey) bool
	// PeerLimits, when set, gives the listener the limits of the sessions
	// it creates for one key: that peer's MaxStreams and ReplayBuffer
	// (zero keeps this Config's). Each peer of a hub has its own budget.
	PeerLimits func(PublicKey) (maxStreams, replayBuffer int)

	ReplayBuffer       int           // bytes of unacked stream data per session; default 32 MiB
	StreamWindow       int           // per-stream credit window a stream starts with (announced in the handshake); default 256 KiB
	MaxStreamWindow    int           // largest a stream's window grows to (auto-tuning); default 4 MiB, at least StreamWindow
	MaxStreams         int           // open streams per session; default 4096
	MaxFrame           int           // largest data payload per frame; default 65504 (a 64 KiB buffer with its header, one record), at least 4096
	RecvBuffer         int           // bytes of receive buffers per session, counted as allocated; default 64 MiB
	ControlBuffer      int           // bytes of unacked control frames the peer's input made us queue; default 2 MiB
	MaxSessionsPerKey  int           // listener: live sessions per peer key; a new one replaces the oldest; default 4
	MaxPathsPerSession int           // listener: paths one session may join; default 8, at most 8
	ReorderBuffer      int           // bytes of frames held past a gap (multipath); default 64 MiB
	ReinjectFloor      time.Duration // floor of the stall interval max(3×srtt, floor) after which a path's frames are reinjected; default 200 ms
	AckDelay           time.Duration // longest an ack waits for a frame to ride on; default 10 ms
	KeepaliveInterval  time.Duration // ping period per path; default 500 ms
	DeadInterval       time.Duration // a path silent this long is dead; default 2 s
	ReconnectMin       time.Duration // first redial delay; default 50 ms
	ReconnectMax       time.Duration // redial delay cap; default 1 s
	SessionTimeout     time.Duration // give up after this long without a path; 0: never
	HandshakeTimeout   time.Duration // default 5 s
	HandshakeRate      float64       // listener: connections per second per source /32 (IPv4) or /64 (IPv6); default 10, burst 2x
	// FirstMessageTimeout is how long a new connection may take to send
	// its first handshake message (listener); default 1 s.
	FirstMessageTimeout time.Duration
	// PendingHandshakes bounds connections that have not sent a first
	// message yet (listener); the newest evicts the oldest; default 512.
	PendingHandshakes int
	// RejectLogInterval is the period of the aggregated log line about
	// refused handshakes (listener); default 10 s.
	RejectLogInterval time.Duration
	// RekeyInterval and RekeyRecords start an in-band rekey of a path once
	// its send key is that old or has sealed that many records; defaults
	// 120 s and 2^30.
	RekeyInterval time.Duration
	RekeyRecords  uint64

	// Dial opens a path. nil: a net.Dialer with Control and TCP_NODELAY.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Control runs on every socket the default dialer and Listen create,
	// so the daemon can set SO_MARK or SO_BINDTODEVICE and keep its own
	// traffic off the tunnel.
	Control func(network, address string, c syscall.RawConn) error
	Logger  *slog.Logger
	// Scheduler decides which paths carry the frames of streams that have
	// none of their own (Stream.SetScheduler); nil: Failover. With one
	// path every scheduler sends everything on it.
	Scheduler Scheduler

	// epoch overrides the process epoch; tests use it to play a restarted
	// peer inside one process.
	epoch uint64
}

// Defaults. Each one is a trade-off explained where it is used.
const (
	DefaultReplayBuffer = 32 << 20
	DefaultStreamWindow = 256 << 10
	// DefaultMaxStreamWindow: a stream whose reader keeps up with a fast
	// sender gets its window doubled, up to this (see Stream.tuneLocked).
	// The credit loop is longer than a path's RTT (the far side's write to
	// its destination, the ack delay, reordering over the slower of two
	// paths): 256 KiB held one flow to 330 Mbit/s over two 200 Mbit/s
	// links at a few ms, and 4 MiB covers 200 + 50 Mbit/s with the slow
	// link's 50 ms queue. The growth of all streams of a session together
	// is bounded by a quarter of RecvBuffer.
	DefaultMaxStreamWindow = 4 << 20
	DefaultMaxStreams      = 4096
	// DefaultMaxFrame makes a full DATA frame, its 32-byte header
	// included, exactly one 64 KiB buffer of the pool: 65519 bytes, the
	// most one record carries, put the frame in a 128 KiB buffer (the next
	// size class), so replay memory was twice the bytes it held. Its payload
	// is still sealed and opened as exactly one record, straight from and
	// into its buffer, and its header rides in the record of the small
	// frames before it.
	DefaultMaxFrame = 1<<16 - headerLen
	// MinMaxFrame is the floor of MaxFrame and of the max frame a peer
	// announces: a peer asking for tiny frames would make every byte cost
	// a header, a record and a buffer.
	MinMaxFrame = 4096
	// DefaultRecvBuffer bounds one session's receive buffers, charged by
	// allocation: 256 full stream windows. A stream that would pass it is
	// reset with ResetLimit.
	DefaultRecvBuffer = 64 << 20
	// DefaultControlBuffer bounds the control frames (WINDOW, RESET) that
	// the peer's own input makes us queue while it withholds acks; past
	// it the path fails with a protocol error. An honest peer acks within
	// a round trip, in which each stream sends at most 4 WINDOWs (one per
	// quarter window consumed) of 64 B: MaxStreams streams all reading at
	// once need 1 MiB; twice that leaves room.
	DefaultControlBuffer = 2 << 20
	// DefaultMaxSessionsPerKey: one daemon normally has one session per
	// peer; a few more cover restarts racing their fence.
	DefaultMaxSessionsPerKey  = 4
	DefaultMaxPathsPerSession = maxPathSlots
	// DefaultReorderBuffer: an honest sender holds at most ReplayBuffer
	// bytes of data unacked, and every frame we hold past a gap is among
	// them; allocations round up to less than twice a payload.
	DefaultReorderBuffer = 2 * DefaultReplayBuffer
	// DefaultReinjectFloor: a path with frames in flight and no ack
	// progress for max(3×srtt, 200 ms) counts as stalled and what sits on
	// it is sent again on the other paths. 200 ms is above the ack delay
	// plus a loaded host's scheduling noise, so a healthy path is not
	// taken for stalled, and well below DeadInterval, so failover between
	// live links is sub-second.
	DefaultReinjectFloor     = 200 * time.Millisecond
	DefaultAckDelay          = 10 * time.Millisecond
	DefaultKeepaliveInterval = 500 * time.Millisecond
	DefaultDeadInterval      = 2 * time.Second
	DefaultReconnectMin      = 50 * time.Millisecond
	DefaultReconnectMax      = time.Second
	DefaultHandshakeTimeout  = 5 * time.Second
	DefaultHandshakeRate     = 10
	// DefaultFirstMessageTimeout: a dialer sends its first message right
	// after the TCP handshake, so a connection silent for 1 s is not one.
	DefaultFirstMessageTimeout = time.Second
	// DefaultPendingHandshakes: at 2,000 silent connections per second each
	// still has 250 ms to speak before it is evicted, far more than a real
	// dialer needs.
	DefaultPendingHandshakes = 512
	DefaultRejectLogInterval = 10 * time.Second
	// DefaultRekeyInterval and DefaultRekeyRecords follow WireGuard's
	// 2-minute rekey; the record bound is far below GCM's 2^32 safe limit
	// for random-looking plaintexts under one key.
	DefaultRekeyInterval = 120 * time.Second
	DefaultRekeyRecords  = 1 << 30
	// maxConcurrentHandshakes bounds handshakes past mac1 (a Noise
	// responder's DH operations and the wait for key confirmation).
	maxConcurrentHandshakes = 128
	// maxSources is the size of the listener's rate-limit table.
	maxSources = 4096

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
	def(&c.MaxStreamWindow, DefaultMaxStreamWindow)
	c.MaxStreamWindow = max(c.MaxStreamWindow, c.StreamWindow)
	def(&c.MaxStreams, DefaultMaxStreams)
	def(&c.MaxFrame, DefaultMaxFrame)
	def(&c.RecvBuffer, DefaultRecvBuffer)
	def(&c.ControlBuffer, DefaultControlBuffer)
	def(&c.MaxSessionsPerKey, DefaultMaxSessionsPerKey)
	def(&c.MaxPathsPerSession, DefaultMaxPathsPerSession)
	c.MaxPathsPerSession = min(c.MaxPathsPerSession, maxPathSlots)
	def(&c.ReorderBuffer, DefaultReorderBuffer)
	defd(&c.ReinjectFloor, DefaultReinjectFloor)
	def(&c.PendingHandshakes, DefaultPendingHandshakes)
	defd(&c.FirstMessageTimeout, DefaultFirstMessageTimeout)
	defd(&c.RejectLogInterval, DefaultRejectLogInterval)
	defd(&c.RekeyInterval, DefaultRekeyInterval)
	if c.RekeyRecords == 0 {
		c.RekeyRecords = DefaultRekeyRecords
	}
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
	if c.MaxFrame > maxFrameLimit || c.MaxFrame < MinMaxFrame {
		return c, fmt.Errorf("usl: MaxFrame %d outside [%d, %d]", c.MaxFrame, MinMaxFrame, maxFrameLimit)
	}
	if c.MaxStreamWindow > 1<<30 || c.ReplayBuffer > 1<<40 {
		return c, errors.New("usl: StreamWindow or ReplayBuffer unreasonably large")
	}
	if c.PrivateKey == (PrivateKey{}) {
		return c, errors.New("usl: Config.PrivateKey is not set")
	}
	if len(c.PeerKeys) == 0 && c.Allow == nil {
		return c, errors.New("usl: Config.PeerKeys is empty: no peer could ever be allowed")
	}
	if c.Scheduler == nil {
		c.Scheduler = Failover{}
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
	if c.Allow != nil {
		return c.Allow(k)
	}
	for _, p := range c.PeerKeys {
		if p == k {
			return true
		}
	}
	return false
}
