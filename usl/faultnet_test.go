package usl

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// faultNet is an in-memory transport whose links can be cut at any byte
// offset, blackholed, slowed down, or refused altogether. Dial (the
// Config.Dial hook) connects to whichever listener currently serves.
type faultNet struct {
	mu     sync.Mutex
	ln     *memListener
	links  []*link
	down   bool // dials fail: a partition
	rng    *rand.Rand
	dials  int
	closed bool
	rate   int // bytes per second of new links; 0: unlimited
}

func newFaultNet(seed uint64) *faultNet {
	return &faultNet{rng: rand.New(rand.NewPCG(seed, seed+1))}
}

type memAddr string

func (a memAddr) Network() string { return "mem" }
func (a memAddr) String() string  { return string(a) }

type memListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (n *faultNet) listen() *memListener {
	l := &memListener{ch: make(chan net.Conn), done: make(chan struct{})}
	n.mu.Lock()
	n.ln = l
	n.mu.Unlock()
	return l
}

func (l *memListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *memListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *memListener) Addr() net.Addr { return memAddr("mem-listener") }

// link relays between the client's and the server's pipe ends.
type link struct {
	n          *faultNet
	ends       [4]net.Conn
	dead       chan struct{}
	once       sync.Once
	mu         sync.Mutex
	cutAfter   int64 // bytes (either direction) before the link is cut; <0: never
	blackholed bool
	bytesPerS  int // 0: unlimited
}

func (l *link) kill() {
	l.once.Do(func() {
		close(l.dead)
		for _, c := range l.ends {
			c.Close()
		}
	})
}

func (n *faultNet) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	n.mu.Lock()
	ln, down, closed, rate := n.ln, n.down, n.closed, n.rate
	n.dials++
	n.mu.Unlock()
	if down || closed || ln == nil {
		return nil, errors.New("faultnet: network unreachable")
	}
	c1, s1 := net.Pipe()
	c2, s2 := net.Pipe()
	l := &link{n: n, ends: [4]net.Conn{c1, s1, c2, s2}, dead: make(chan struct{}), cutAfter: -1, bytesPerS: rate}
	select {
	case ln.ch <- s2:
	case <-ln.done:
		l.kill()
		return nil, errors.New("faultnet: connection refused")
	case <-ctx.Done():
		l.kill()
		return nil, ctx.Err()
	}
	n.mu.Lock()
	n.links = append(n.links, l)
	n.mu.Unlock()
	go l.pump(s1, c2)
	go l.pump(c2, s1)
	return c1, nil
}

func (l *link) pump(src, dst net.Conn) {
	defer l.kill()
	buf := make([]byte, 8192)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		l.mu.Lock()
		hole, rate, cut := l.blackholed, l.bytesPerS, l.cutAfter
		if cut >= 0 {
			if int64(n) > cut {
				n = int(cut)
			}
			l.cutAfter -= int64(n)
		}
		l.mu.Unlock()
		if hole {
			// A blackhole: nothing gets through and nobody is told.
			<-l.dead
			return
		}
		if rate > 0 {
			select {
			case <-time.After(time.Duration(n) * time.Second / time.Duration(rate)):
			case <-l.dead:
				return
			}
		}
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if cut >= 0 && cut-int64(n) <= 0 {
			return // cut: possibly in the middle of a frame or record
		}
	}
}

// current is the newest link still alive.
func (n *faultNet) current() *link {
	n.mu.Lock()
	defer n.mu.Unlock()
	for i := len(n.links) - 1; i >= 0; i-- {
		select {
		case <-n.links[i].dead:
		default:
			return n.links[i]
		}
	}
	return nil
}

func (n *faultNet) setDown(down bool) {
	n.mu.Lock()
	n.down = down
	n.mu.Unlock()
}

// killAll cuts every link, as a crashed host or a flushed NAT would.
func (n *faultNet) killAll() {
	n.mu.Lock()
	links := n.links
	n.links = nil
	n.mu.Unlock()
	for _, l := range links {
		l.kill()
	}
}

func (n *faultNet) close() {
	n.mu.Lock()
	n.closed = true
	n.mu.Unlock()
	n.killAll()
}
