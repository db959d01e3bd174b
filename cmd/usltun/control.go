package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"syscall"
	"time"
)

// The control socket answers every connection with one JSON status document
// and closes it. By default it is an abstract Unix socket: abstract names are
// private to a network namespace, so two daemons with the same device name in
// different namespaces never collide, and nothing is left on disk after a
// crash.

// defaultControlPath is the status socket of the daemon that owns device tun.
func defaultControlPath(tun string) string { return "@usltun/" + tun }

type controlServer struct {
	ln     net.Listener
	status func() any
	log    *slog.Logger
	done   chan struct{}
}

func listenControl(path string, status func() any, log *slog.Logger) (*controlServer, error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("control socket %s is in use: another usltun runs for this device; stop it or pass --control", path)
		}
		if errors.Is(err, syscall.EROFS) {
			return nil, fmt.Errorf("control socket %s: the file system is read-only: pass --control with a writable path, or an abstract name like @usltun/%s", path, filepath.Base(path))
		}
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	s := &controlServer{ln: ln, status: status, log: log, done: make(chan struct{})}
	go s.serve()
	return s, nil
}

func (s *controlServer) serve() {
	defer close(s.done)
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if err := json.NewEncoder(c).Encode(s.status()); err != nil {
			s.log.Debug("control: write status", "err", err)
		}
		c.Close()
	}
}

func (s *controlServer) Close() error {
	err := s.ln.Close()
	<-s.done
	return err
}

// queryControl fetches the status document from a running daemon.
func queryControl(ctx context.Context, path string) ([]byte, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("no usltun daemon answers on %s (is `usltun up` running in this network namespace, with this --tun?): %w", path, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	b, err := io.ReadAll(io.LimitReader(c, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read status from %s: %w", path, err)
	}
	return b, nil
}
