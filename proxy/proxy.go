// Package proxy holds what usltun's proxy front ends (socks, httpproxy)
// share: a listener loop with a bound on concurrent clients and a Close that
// ends them all, the splice between a client's TCP connection and a flow, and
// the rule for where an unauthenticated proxy may listen.
//
// Splice keeps TCP's semantics across the proxy: a FIN from either side
// becomes CloseWrite on the other, a reset (or any error) on either side
// aborts both, the client with an RST (SO_LINGER 0) and the flow with Abort.
// A flow half-closed for longer than flow.DefaultHalfCloseTimeout is
// aborted. The copy loop is internal/splice's, with buffers from the
// Server's pool.
package proxy

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/internal/bufpool"
	"github.com/usltun/usltun/internal/splice"
)

// Server runs a handler per accepted connection, at most max at once;
// beyond that new connections are closed at once.
type Server struct {
	ln     net.Listener
	handle func(context.Context, net.Conn)
	log    *slog.Logger
	slots  chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	bufs   bufpool.Pool // copy buffers, borrowed only while data moves

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	closed  bool
	refused int       // connections closed at the limit since the last log line
	logged  time.Time // when that line was written
	wg      sync.WaitGroup
	done    chan struct{}
}

// Serve starts accepting on ln. handle owns the connection and must close
// it; Close closes it too and cancels handle's context, which makes a
// blocked handle return.
func Serve(ln net.Listener, max int, log *slog.Logger, handle func(context.Context, net.Conn)) *Server {
	s := &Server{ln: ln, handle: handle, log: log, slots: make(chan struct{}, max), conns: map[net.Conn]struct{}{}, done: make(chan struct{})}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	go s.acceptLoop()
	return s
}

// Addr is the listening address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

func (s *Server) acceptLoop() {
	defer close(s.done)
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("accept", "err", err)
			time.Sleep(100 * time.Millisecond) // EMFILE: back off, don't spin
			continue
		}
		select {
		case s.slots <- struct{}{}:
		default:
			c.Close()
			s.refusedOne()
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			<-s.slots
			continue
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				<-s.slots
				s.wg.Done()
			}()
			s.handle(s.ctx, c)
		}()
	}
}

// refusedOne counts a connection closed at the limit, logging at most one
// line per second: a client flooding the listener must not flood the log.
func (s *Server) refusedOne() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refused++
	if time.Since(s.logged) < time.Second {
		return
	}
	s.log.Warn("too many clients: closed new connections", "count", s.refused, "max", cap(s.slots))
	s.refused, s.logged = 0, time.Now()
}

// Close stops accepting, closes every client connection and waits for the
// handlers to return.
func (s *Server) Close() error {
	err := s.ln.Close()
	<-s.done
	s.cancel()
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

// CheckListen refuses a listening address beyond this host for a proxy
// without authentication: anyone who reaches it would use the tunnel as
// this user. what names the flag in the error.
func CheckListen(what, addr string, authenticated bool) error {
	if authenticated {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s %s: want ADDR:PORT, like 127.0.0.1:1080", what, addr)
	}
	if host == "localhost" {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err == nil && ip.Unmap().IsLoopback() {
		return nil
	}
	return fmt.Errorf("%s %s would accept clients from other machines without authentication, letting anyone who reaches it use this tunnel: listen on 127.0.0.1, or require a password file", what, addr)
}

// Splice relays between the client connection c and the flow f until both
// directions are finished, then closes both.
func (s *Server) Splice(c *net.TCPConn, f flow.Conn) { splicePair(c, f, &s.bufs) }

func splicePair(c *net.TCPConn, f flow.Conn, pool *bufpool.Pool) {
	done := make(chan error, 2)
	go func() { done <- copyHalf(f, c, pool) }()
	go func() { done <- copyHalf(c, f, pool) }()
	err := <-done
	pending := 1
	if err == nil {
		t := time.NewTimer(flow.DefaultHalfCloseTimeout)
		select {
		case err = <-done:
			pending = 0
		case <-t.C:
			err = errors.New("half-closed too long")
		}
		t.Stop()
		if err == nil {
			c.Close()
			f.Close()
			return
		}
	}
	c.SetLinger(0) // Close sends an RST: the client learns it was aborted
	c.Close()
	f.Abort()
	for ; pending > 0; pending-- {
		<-done
	}
}

type halfCloser interface {
	io.ReadWriter
	CloseWrite() error
}

// copyHalf copies src to dst; at src's EOF it half-closes dst.
func copyHalf(dst halfCloser, src io.Reader, pool *bufpool.Pool) error {
	if err := splice.Copy(dst, src, pool, nil); err != nil {
		return err
	}
	return dst.CloseWrite()
}

// Users maps user names to passwords, for a proxy's authentication.
type Users map[string]string

// Check compares in constant time, and takes as long for an unknown user
// as for a known one, so timing says nothing about names or passwords.
func (u Users) Check(user, pass string) bool {
	want, known := u[user]
	if !known {
		want = "\x00unknown user"
	}
	return subtle.ConstantTimeCompare([]byte(pass), []byte(want)) == 1 && known
}

// LoadUsers reads a password file: one "user:password" per line; empty
// lines and lines starting with # are skipped. The file holds secrets, so
// one readable by group or others is refused.
func LoadUsers(path string) (Users, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("password file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("password file %s has mode %04o, readable by others: chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("password file: %w", err)
	}
	u := Users{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimRight(line, "\r")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, pass, ok := strings.Cut(line, ":")
		if !ok || user == "" || pass == "" || len(user) > 255 || len(pass) > 255 {
			return nil, fmt.Errorf("password file %s line %d: want user:password (each 1 to 255 bytes)", path, i+1)
		}
		u[user] = pass
	}
	if len(u) == 0 {
		return nil, fmt.Errorf("password file %s has no user:password line", path)
	}
	return u, nil
}
