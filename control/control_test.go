package control

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func echoHandler(_ context.Context, req Request, files []*os.File) (any, func(), error) {
	for _, f := range files {
		f.Close()
	}
	if req.Op == OpStatus {
		return map[string]string{"op": req.Op}, nil, nil
	}
	return nil, nil, errors.New("unknown request " + req.Op)
}

func call(t *testing.T, path, op string) (map[string]string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var out map[string]string
	err := Call(ctx, path, Request{Op: op}, &out)
	return out, err
}

func TestPathSocketRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "usltun")
	path := filepath.Join(dir, "usl0.sock")
	s, err := Listen(path, echoHandler, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		p    string
		want os.FileMode
	}{{dir, 0o700}, {path, 0o600}} {
		fi, err := os.Stat(c.p)
		if err != nil || fi.Mode().Perm() != c.want {
			t.Errorf("%s: mode %v (%v), want %04o", c.p, fi.Mode().Perm(), err, c.want)
		}
	}
	out, err := call(t, path, OpStatus)
	if err != nil || out["op"] != OpStatus {
		t.Fatalf("status: %v, %v", out, err)
	}
	if _, err := call(t, path, "frobnicate"); err == nil || !strings.Contains(err.Error(), "unknown request frobnicate") {
		t.Fatalf("unknown op: %v", err)
	}
	// A second daemon on the same path is told who holds it.
	if _, err := Listen(path, echoHandler, nil); err == nil || !strings.Contains(err.Error(), "another usltun runs") {
		t.Fatalf("second listen: %v", err)
	}
	s.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after Close: %v", err)
	}
	if _, err := call(t, path, OpStatus); !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("after close: %v, want ErrNoDaemon", err)
	}
}

func TestStaleSocketIsReplaced(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o700)
	path := filepath.Join(dir, "usl0.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close() // the file stays, as after a crash
	s, err := Listen(path, echoHandler, nil)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	defer s.Close()
	if _, err := call(t, path, OpStatus); err != nil {
		t.Fatal(err)
	}
}

func TestDirectoryMustBePrivate(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Listen(filepath.Join(dir, "usl0.sock"), echoHandler, nil)
	if err == nil || !strings.Contains(err.Error(), "mode 0755") || !strings.Contains(err.Error(), "chmod 700") {
		t.Fatalf("open directory: %v", err)
	}
}

func TestAbstractRoundTrip(t *testing.T) {
	path := "@usltun-test/" + t.Name() + "/" + strings.Repeat("x", 4)
	s, err := Listen(path, echoHandler, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var raw json.RawMessage
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := Call(ctx, path, Request{Op: OpStatus}, &raw); err != nil || string(raw) != `{"op":"status"}` {
		t.Fatalf("raw body %s, %v", raw, err)
	}
}

// A client that connects and sends nothing is cut off after IOTimeout and
// does not block others.
func TestSilentClientIsBounded(t *testing.T) {
	path := "@usltun-test/" + t.Name()
	s, err := Listen(path, echoHandler, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var silent []net.Conn
	for range maxConcurrent {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, c)
	}
	defer func() {
		for _, c := range silent {
			c.Close()
		}
	}()
	start := time.Now()
	deadline := start.Add(IOTimeout + 3*time.Second)
	for {
		if _, err = call(t, path, OpStatus); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("served nobody for %v with %d silent clients: %v", time.Since(start), maxConcurrent, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestTrusted(t *testing.T) {
	for _, c := range []struct {
		uid  uint32
		self int
		want bool
	}{{0, 1000, true}, {1000, 1000, true}, {1001, 1000, false}, {1000, 0, false}, {0, 0, true}} {
		if got := trusted(c.uid, c.self); got != c.want {
			t.Errorf("trusted(%d, %d) = %v", c.uid, c.self, got)
		}
	}
}

// TestHoldPassesFile: an attach-tun request carries a descriptor, the
// connection stays open after the response, and closing it hangs up.
func TestHoldPassesFile(t *testing.T) {
	path := "@usltun-test/" + t.Name()
	hungUp := make(chan struct{})
	s, err := Listen(path, func(_ context.Context, req Request, files []*os.File) (any, func(), error) {
		if req.Op != OpAttachTUN || req.Attach == nil || len(files) != 1 {
			return nil, nil, errors.New("want attach-tun with one file")
		}
		f := files[0]
		_, err := f.Write([]byte(req.Attach.Name))
		f.Close()
		return map[string]bool{"attached": err == nil}, func() { close(hungUp) }, nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var out map[string]bool
	hold, err := Hold(ctx, path, Request{Op: OpAttachTUN, Attach: &Attach{Name: "via-fd", MTU: 1500}}, []*os.File{w}, &out)
	w.Close()
	if err != nil || !out["attached"] {
		t.Fatalf("hold: %v, %v", out, err)
	}
	got := make([]byte, 6)
	if _, err := io.ReadFull(r, got); err != nil || string(got) != "via-fd" {
		t.Fatalf("through the passed file: %q, %v", got, err)
	}
	select {
	case <-hungUp:
		t.Fatal("hung up while the client holds the connection")
	case <-time.After(IOTimeout + 500*time.Millisecond): // past the exchange deadline
	}
	hold.Close()
	select {
	case <-hungUp:
	case <-time.After(3 * time.Second):
		t.Fatal("no hangup after the client closed")
	}
}

// A name bound without listen (connect is refused) is reported, not used.
func TestAbstractBoundNotListening(t *testing.T) {
	path := "@usltun-test/" + t.Name()
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	_, err = Listen(path, echoHandler, nil)
	if err == nil || !strings.Contains(err.Error(), "does not accept connections") {
		t.Fatalf("listen on a bound name: %v", err)
	}
}

func TestDefaultPath(t *testing.T) {
	if p, err := defaultPath("usl0", 0, "/run/user/0"); err != nil || p != "@usltun/usl0" {
		t.Errorf("root: %q, %v", p, err)
	}
	if p, err := defaultPath("usl1", 1000, "/run/user/1000"); err != nil || p != "/run/user/1000/usltun/usl1.sock" {
		t.Errorf("user: %q, %v", p, err)
	}
	if _, err := defaultPath("usl0", 1000, ""); err == nil || !strings.Contains(err.Error(), "XDG_RUNTIME_DIR is not set") {
		t.Errorf("user without XDG_RUNTIME_DIR: %v", err)
	}
}
