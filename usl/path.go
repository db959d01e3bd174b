package usl

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// A path is one authenticated, encrypted byte stream (a TCP connection)
// carrying frames of one session. Each path has a reader and a writer
// goroutine; frames never get a goroutine of their own.
type path struct {
	s      *Session
	conn   *liveConn
	rc     *recordConn
	remote string
	start  time.Time
	id     uint32 // the dialer's path id, unique within the session
	pref   int    // preference: the dialer's endpoint index (path id's high byte - 1)
	local  string // local address of the connection

	kick chan struct{} // cap 1: "there may be something to send"
	wtok chan struct{} // cap 1: held by whoever runs a write round (writeRound)
	done chan struct{} // closed when the path is closed
	once sync.Once

	watchdog *time.Timer

	// Guarded by s.mu.
	closed      bool
	next        uint64 // next session seq this path sends
	pongPending bool
	pongVal     uint64
	pingDue     bool
	ackDue      bool      // dialer: the first write must go out even if empty (key confirmation)
	endDue      bool      // the ack of the peer's CLOSE went out: the writer ends the session
	running     bool      // run has started the goroutines: the keys are set, writeInline may write
	stage       []byte    // small frames and headers gathered for one write
	segs        [][]byte  // plaintext pieces of one write: stage parts and replay payloads
	held        []*Stream // scratch of fillLocked: streams with a deferred frame this round
	rk          rekeyState
	rkOut       []byte    // writer: a REKEY frame taken from rk, sealed as its own record
	rkKey       *[32]byte // writer: the send key to install after rkOut

	mp        pathStats     // multipath bookkeeping, guarded by s.mu
	recvBytes atomic.Uint64 // frame bytes read, headers included
	writing   atomic.Int64  // UnixNano when the writer's current Write began; 0 when it is not writing

	hdr [headerLen]byte     // reader's header buffer
	ctl [maxCtlPayload]byte // reader's control payload buffer
}

// liveConn stamps the time of every successful read, so the dead-interval
// watchdog sees a slow link that still trickles bytes as alive.
type liveConn struct {
	net.Conn
	base time.Time
	last atomic.Int64 // ns since base of the last read
}

func newLiveConn(c net.Conn) *liveConn {
	limitUnsent(c)
	return &liveConn{Conn: c, base: time.Now()}
}

// pathUnsentLimit is the TCP_NOTSENT_LOWAT of every path socket: the
// kernel takes no more from a writer while this much is queued and not
// yet sent. Without it a path's socket buffer grows to megabytes, and a
// frame written now waits behind all of it; with several paths those
// bytes are also committed to one path long before they must be, so a
// mirror copy that lost the race still sits in the queue of the live
// path when the other one blackholes. 128 KiB keeps a 1 Gbit/s path
// busy between two writer rounds (1 ms) while frames queue at most that
// long in the kernel; the replay buffer is the queue, not the socket.
const pathUnsentLimit = 128 << 10

// limitUnsent sets pathUnsentLimit on c if it is a TCP socket; other
// connections (tests' pipes) are left alone.
func limitUnsent(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		// Best effort: an old kernel without the option keeps the
		// default behaviour.
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, pathUnsentLimit)
	})
}

func (c *liveConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.last.Store(int64(time.Since(c.base)))
	}
	return n, err
}

func (c *liveConn) idle() time.Duration {
	return time.Since(c.base) - time.Duration(c.last.Load())
}

var errPathDead = errors.New("path dead: nothing received within the dead interval")

func newPath(s *Session, c *liveConn) *path {
	// The stage holds whole small frames and the headers of large ones;
	// one record's worth, so each stage piece is sealed as one record.
	stage := maxRecordPlain
	p := &path{
		s:      s,
		conn:   c,
		remote: c.RemoteAddr().String(),
		local:  addrString(c.LocalAddr()),
		start:  time.Now(),
		kick:   make(chan struct{}, 1),
		wtok:   make(chan struct{}, 1),
		done:   make(chan struct{}),
		stage:  make([]byte, 0, stage),
	}
	p.mp.slot = -1
	// Created stopped, so close never races with run over the field.
	p.watchdog = time.AfterFunc(time.Hour, p.checkDead)
	p.watchdog.Stop()
	return p
}

func (p *path) poke() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// close tears the connection down; the reader then reports the path down.
func (p *path) close() {
	p.once.Do(func() {
		close(p.done)
		p.conn.Close()
		p.watchdog.Stop()
	})
}

// run starts the goroutines of an attached path whose keys are set.
func (p *path) run() {
	p.s.mu.Lock()
	p.running = true
	p.s.unlock()
	p.conn.last.Store(int64(time.Since(p.conn.base)))
	dead := p.s.cfg.DeadInterval
	// The watchdog is a timer, not a check in the writer loop, because the
	// writer may sit blocked in Write on a blackholed connection forever.
	p.watchdog.Reset(dead)
	go p.readLoop()
	go p.writeLoop()
}

// abandon gives up a path attached but never run.
func (p *path) abandon(err error) {
	p.s.pathFailed(p, err)
	p.s.pathDown(p, err)
	p.s.wg.Add(-2)
}

func (p *path) checkDead() {
	dead := p.s.cfg.DeadInterval
	idle := p.conn.idle()
	if idle >= dead {
		p.s.pathFailed(p, errPathDead)
		return
	}
	select {
	case <-p.done:
	default:
		p.watchdog.Reset(dead - idle)
	}
}

func (p *path) readLoop() {
	defer p.s.wg.Done()
	err := p.readFrames()
	p.s.pathDown(p, err)
}

func (p *path) readFrames() error {
	s := p.s
	for {
		if _, err := io.ReadFull(p.rc, p.hdr[:]); err != nil {
			return fmt.Errorf("read: %w", err)
		}
		h, err := parseHeader(p.hdr[:], s.cfg.MaxFrame)
		if err != nil {
			return fmt.Errorf("protocol: %w", err)
		}
		p.recvBytes.Add(uint64(headerLen) + uint64(h.length))
		var data *[]byte
		var payload []byte
		switch {
		case h.typ == frameData:
			data = s.pool.get(int(h.length))
			payload = *data
		case h.typ == frameOpen:
			payload = make([]byte, h.length) // kept as the descriptor
		default:
			payload = p.ctl[:h.length]
		}
		if _, err := io.ReadFull(p.rc, payload); err != nil {
			if data != nil {
				s.pool.put(data)
			}
			return fmt.Errorf("read: %w", err)
		}
		if h.typ == frameRekey {
			s.mu.Lock()
			err := p.rekeyLocked(payload)
			s.unlock()
			if err != nil {
				return err
			}
		}
		if err := s.handleFrame(p, h, payload, data); err != nil {
			return err
		}
	}
}

func (p *path) writeLoop() {
	defer p.s.wg.Done()
	s := p.s
	// Keepalive from the side that needs it. The dialer pings every
	// KeepaliveInterval, and every PING is answered with a PONG: the
	// dialer's dead-interval watchdog is fed by the PONGs, the listener's
	// by the PINGs. So the listener ticks at half the rate, and pings on
	// every other tick only (for its RTT estimate) while it hears from the
	// path, on every tick once the path has gone quiet for an interval.
	// Dead-peer detection is the watchdog's, unchanged; a hub with 100
	// idle peers handles 10 records and 2 timer wakeups per peer every 2 s
	// instead of 16 and 4.
	every := s.cfg.KeepaliveInterval
	if !s.dialer {
		every *= 2
	}
	ping := time.NewTicker(every)
	defer ping.Stop()
	pingTicks := 0
	ackTimer := time.NewTimer(time.Hour)
	ackTimer.Stop()
	defer ackTimer.Stop()
	// The reinjection tick runs only while the session has several paths.
	var tick *time.Ticker
	var tickC <-chan time.Time
	defer func() {
		if tick != nil {
			tick.Stop()
		}
	}()
	for {
		p.wtok <- struct{}{}
		r := p.writeRound()
		<-p.wtok
		wrote, wait, stop := r.wrote, r.wait, r.stop
		if r.multi != (tick != nil) {
			if r.multi {
				tick = time.NewTicker(reinjectTick)
				tickC = tick.C
			} else {
				tick.Stop()
				tick, tickC = nil, nil
			}
		}
		if stop {
			s.mu.Lock()
			end := p.endDue
			s.unlock()
			if end {
				// The ack of the peer's CLOSE is on the wire: nothing is
				// left to deliver in either direction.
				s.end(ErrSessionClosed, Closed)
			}
			return
		}
		if wrote {
			continue
		}
		if wait > 0 {
			ackTimer.Reset(wait)
		}
		select {
		case <-p.kick:
		case <-ackTimer.C:
		case <-ping.C:
			pingTicks++
			if !s.dialer && pingTicks%2 == 0 && p.conn.idle() < s.cfg.KeepaliveInterval {
				break
			}
			s.mu.Lock()
			p.pingDue = true
			s.unlock()
		case <-tickC:
			s.mu.Lock()
			if s.multiLocked() {
				s.tickLocked(p, time.Now())
			}
			s.unlock()
		case <-p.done:
			return
		}
	}
}

// round is what one writeRound did. wrote says something went out;
// wait>0 asks for a delayed ack's round then; stop says the path failed
// (reported already) or the session must end (p.endDue): the writer then
// stops; multi says the session had several paths (the writer's
// reinjection tick runs only then), read under the round's own lock.
type round struct {
	wrote, stop, multi bool
	wait               time.Duration
}

// writeRound gathers what p should send now and writes it: one round of
// the path's writer, run by its goroutine (writeLoop) or in the goroutine
// of a caller that queued a small frame (writeInline). The caller holds
// p.wtok, which serialises the stage, the segments and the record layer's
// send side between the two.
func (p *path) writeRound() (r round) {
	s := p.s
	s.mu.Lock()
	r.multi = s.multiLocked()
	if p.endDue {
		s.unlock()
		r.stop = true
		return r
	}
	now := time.Now()
	pinned, wait, endAfter := s.fillLocked(p, now)
	p.maybeStartRekeyLocked(now)
	p.rkOut, p.rkKey, p.rk.out, p.rk.sendNext = p.rk.out, p.rk.sendNext, nil, nil
	if endAfter {
		p.endDue = true
	}
	s.unlock()
	if len(p.segs) == 0 && p.rkOut == nil {
		r.wait = wait
		return r
	}
	r.wrote = true
	p.rc.seal(p.segs)
	if p.rkOut != nil {
		// The REKEY frame ends its own record; what follows is sealed
		// with the new key.
		p.rc.seal([][]byte{p.rkOut})
		if p.rkKey != nil {
			if err := p.rc.setSend(*p.rkKey); err != nil {
				s.pathFailed(p, err)
				r.stop = true
				return r
			}
		}
		p.rkOut, p.rkKey = nil, nil
	}
	if pinned {
		// Unpin before the Write: a Write stuck on a blackholed
		// connection must not hold acked buffers out of the pool.
		s.mu.Lock()
		s.unpinLocked()
		s.unlock()
	}
	p.writing.Store(time.Now().UnixNano())
	err := p.rc.flush()
	p.writing.Store(0)
	if err != nil {
		s.pathFailed(p, fmt.Errorf("write: %w", err))
		r.stop = true
		return r
	}
	r.stop = endAfter
	return r
}

// writeInline writes what is queued for p in the caller's goroutine, as
// crypto/tls writes in its caller's: the frame a request/response flow or
// a connect just queued goes out without waking the writer goroutine,
// which on two cores is a thread wake-up each way (one of the hand-offs
// of docs/performance.md). If the writer is in a round of its own, it is
// poked instead and takes the frame in its next round; so is it when the
// round leaves more queued than one round takes, or the session must end
// (the writer ends it: the caller may hold locks of its own).
func (p *path) writeInline() {
	select {
	case p.wtok <- struct{}{}:
	default:
		p.poke()
		return
	}
	stop := p.writeRound().stop
	<-p.wtok
	s := p.s
	s.mu.Lock()
	more := stop || p.next < s.nextSeq || len(p.mp.resend) > 0
	s.unlock()
	if more {
		p.poke()
	}
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
