// Package control is the local control protocol of a usltun daemon: how
// `usltun status` (and later commands) talk to a running `usltun up` on the
// same machine, and who may.
//
// Transport. A Unix stream socket. A daemon run by root keeps the abstract
// name @usltun/<tun>: abstract names are private to a network namespace, so
// daemons with the same device name in different namespaces never collide,
// and nothing is left on disk after a crash. A daemon run by an ordinary user
// listens on $XDG_RUNTIME_DIR/usltun/<tun>.sock, in a directory of mode 0700
// owned by that user, socket mode 0600 (DefaultPath).
//
// Who may talk to whom. Abstract sockets have no file permissions, so both
// ends check the other's credentials (SO_PEERCRED) on every connection:
//   - the server serves only root and its own uid; anyone else gets one error
//     response and the connection is closed;
//   - the client trusts only a server run by root or by itself, and refuses
//     to use whatever a foreign process serves under the name;
//   - Listen reports a name bound first by someone else (squatting) with the
//     holder's uid and pid, instead of starting.
//
// Messages. One request and one response per connection, each a single line
// of JSON (at most MaxMessage bytes, newline-terminated):
//
//	request:  {"op":"status"}
//	          {"op":"attach-tun","attach":{"name":...,"mtu":1500,"offload":3,"routes":[...]}}
//	          {"op":"policy-show"}
//	          {"op":"policy-set","policy":{"file":"rules.toml","toml":"[[policy]]\n..."}}
//	          {"op":"policy-flush"}
//	response: {"body":{...}}            on success, body specific to op
//	                                    (the policy ops: a PolicyState)
//	          {"error":"one line"}      on failure
//
// attach-tun carries one file descriptor (SCM_RIGHTS, sent with the request
// line's bytes): a TUN device created by `usltun exec` in its namespace,
// which the daemon serves with a netstack of its own. That connection stays
// open after a successful response: the daemon serves the device until the
// client closes the connection (the command ended) or the daemon stops. For
// every other op the server closes the connection after its response. Unknown ops get an error response naming the op, so an older
// daemon answers a newer client clearly. Every exchange is bounded by
// IOTimeout on the server.
package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// MaxMessage bounds one request or response line.
	MaxMessage = 1 << 20
	// IOTimeout bounds one exchange on the server side, so a client that
	// connects and sends nothing holds a goroutine for at most this long.
	IOTimeout = 2 * time.Second
	// maxConcurrent bounds the exchanges served at once: a local user
	// flooding the socket costs at most this many goroutines.
	maxConcurrent = 16
)

// Ops understood by this build.
const (
	OpStatus    = "status"
	OpAttachTUN = "attach-tun"
	// OpPolicyShow reports the Socket Control rules and the open flows'
	// classes; OpPolicySet replaces the rules with Request.Policy's, all or
	// nothing; OpPolicyFlush empties them (every flow to the default
	// scheduler). Each answers with the PolicyState after the request.
	OpPolicyShow  = "policy-show"
	OpPolicySet   = "policy-set"
	OpPolicyFlush = "policy-flush"
	OpReload      = "reload" // re-read the peer table; the body says what changed
)

// maxFiles bounds the descriptors accepted with one request; extra ones are
// closed.
const maxFiles = 1

// Request is what a client sends.
type Request struct {
	Op     string      `json:"op"`
	Attach *Attach     `json:"attach,omitempty"` // OpAttachTUN
	Policy *PolicyFile `json:"policy,omitempty"` // OpPolicySet
}

// PolicyFile is a rule file sent with OpPolicySet. The client reads it, so
// the daemon needs no access to the user's files; File names it in the
// daemon's error messages ("rules.toml:3: rule 1 ...").
type PolicyFile struct {
	File string `json:"file"`
	TOML string `json:"toml"`
}

// PolicyState is the answer to the policy ops: the rules in force, their
// generation (one more for every set and flush since the daemon started)
// and the open flows with the class and scheduler each has now.
type PolicyState struct {
	Generation uint64       `json:"generation"`
	Default    string       `json:"default_scheduler"`
	Rules      []PolicyRule `json:"rules"`
	Flows      []PolicyFlow `json:"flows"`
	// FlowsTotal counts the open flows; Flows lists at most MaxPolicyFlows
	// of them, so that the answer fits in MaxMessage.
	FlowsTotal int `json:"flows_total"`
}

// MaxPolicyFlows bounds PolicyState.Flows.
const MaxPolicyFlows = 1000

// PolicyRule is one rule as installed.
type PolicyRule struct {
	Name      string `json:"name"`
	Match     string `json:"match"`
	Scheduler string `json:"scheduler"`
	Pos       string `json:"pos,omitempty"` // where it was written
}

// PolicyFlow is one open flow: its destination (proto/host:port), class
// and scheduler.
type PolicyFlow struct {
	Dest      string `json:"dest"`
	Class     string `json:"class"`
	Scheduler string `json:"scheduler"`
}

// Attach describes the TUN device passed with an OpAttachTUN request.
type Attach struct {
	Name    string   `json:"name"`    // a label for logs and status
	MTU     int      `json:"mtu"`     // the device's MTU
	Offload int      `json:"offload"` // tun.Offload of the descriptor
	Routes  []string `json:"routes"`  // prefixes for the tunnel; none: all
}

// Response is what a server answers: Body on success, Error otherwise.
type Response struct {
	Body  json.RawMessage `json:"body,omitempty"`
	Error string          `json:"error,omitempty"`
}

// Handler answers one request from an authorized client, with the files
// passed along (the handler owns them). Its result is encoded as the
// response body; an error becomes the response's error line. A non-nil
// hangup keeps the connection open after the response and is called once
// when the client closes it or the server closes.
type Handler func(ctx context.Context, req Request, files []*os.File) (body any, hangup func(), err error)

// Cred is a process's identity as the kernel reports it for a socket peer.
type Cred struct {
	UID, GID uint32
	PID      int32
}

// trusted reports whether a peer with uid may be served by (or serve) a
// process running as self: root, or the same user.
func trusted(uid uint32, self int) bool { return uid == 0 || int(uid) == self }

// DefaultPath is where the daemon for device tun listens: the abstract name
// @usltun/<tun> for root, else $XDG_RUNTIME_DIR/usltun/<tun>.sock.
func DefaultPath(tun string) (string, error) {
	return defaultPath(tun, os.Geteuid(), os.Getenv("XDG_RUNTIME_DIR"))
}

func defaultPath(tun string, euid int, dir string) (string, error) {
	if euid == 0 {
		return "@usltun/" + tun, nil
	}
	if dir == "" {
		return "", errors.New("XDG_RUNTIME_DIR is not set, so there is no private place for this user's control socket: log in through a session that sets it, export XDG_RUNTIME_DIR=/run/user/$(id -u), or pass --control PATH")
	}
	return filepath.Join(dir, "usltun", tun+".sock"), nil
}

// Server serves requests on one control socket.
type Server struct {
	ln      *net.UnixListener
	path    string
	handler Handler
	log     *slog.Logger
	slots   chan struct{}
	wg      sync.WaitGroup
	done    chan struct{}

	mu   sync.Mutex
	held map[*net.UnixConn]struct{} // attach-tun connections kept open
}

// Listen binds path (see DefaultPath) and serves requests with h until
// Close. A path socket's directory is created with mode 0700 if missing;
// an existing one must belong to this user and be closed to others.
func Listen(path string, h Handler, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	abstract := strings.HasPrefix(path, "@")
	if !abstract {
		if err := privateDir(filepath.Dir(path)); err != nil {
			return nil, err
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if errors.Is(err, syscall.EADDRINUSE) {
		err = inUse(path)
		switch {
		case err == nil && abstract:
			// Bound, but nobody accepts: no credentials to report.
			err = errors.New("the name is bound by a process that does not accept connections, so its owner cannot be identified (someone bound it first?); pass --control with a name or path of your own")
		case err == nil:
			// Nobody answers: a socket file left by a crash, in a
			// directory only we can write. Replace it.
			os.Remove(path)
			ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		}
	}
	if errors.Is(err, syscall.EROFS) {
		return nil, fmt.Errorf("control socket %s: the file system is read-only: pass --control with a writable path, or an abstract name like @usltun/%s", path, strings.TrimSuffix(filepath.Base(path), ".sock"))
	}
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if !abstract {
		ln.SetUnlinkOnClose(true)
		if err := os.Chmod(path, 0o600); err != nil {
			ln.Close()
			return nil, fmt.Errorf("control socket %s: %w", path, err)
		}
	}
	s := &Server{ln: ln, path: path, handler: h, log: log, slots: make(chan struct{}, maxConcurrent), done: make(chan struct{}), held: map[*net.UnixConn]struct{}{}}
	go s.serve()
	return s, nil
}

// inUse explains who holds path, or returns nil when nobody answers there.
func inUse(path string) error {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return nil
	}
	defer c.Close()
	cred, err := PeerCred(c.(*net.UnixConn))
	if err != nil {
		return fmt.Errorf("in use, and its holder's identity is unknown (%v)", err)
	}
	if !trusted(cred.UID, os.Geteuid()) {
		return fmt.Errorf("the name is held by another user's process (uid %d, pid %d): someone bound it first; stop that process, or pass --control with a name or path of your own", cred.UID, cred.PID)
	}
	return fmt.Errorf("in use by pid %d (uid %d): another usltun runs for this device; stop it, or pass --tun or --control", cred.PID, cred.UID)
}

// privateDir makes sure dir exists, is a directory owned by this user and
// is not accessible to group or others.
func privateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("control socket directory %s: %w", dir, err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("control socket directory %s: %w", dir, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("control socket directory %s is not a directory (a symlink?): remove it", dir)
	case ok && int(st.Uid) != os.Geteuid():
		return fmt.Errorf("control socket directory %s belongs to uid %d, not to you (uid %d): remove it or pass --control PATH", dir, st.Uid, os.Geteuid())
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("control socket directory %s has mode %04o: it must be private to you (chmod 700 %s)", dir, fi.Mode().Perm(), dir)
	}
	return nil
}

// Path is where the server listens.
func (s *Server) Path() string { return s.path }

func (s *Server) serve() {
	defer close(s.done)
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: back off rather than spin.
			s.log.Warn("control: accept", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		select {
		case s.slots <- struct{}{}:
		default:
			c.Close() // too many at once: the client sees EOF and retries
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			hangup := s.exchange(c)
			<-s.slots // a held connection does not count against the bound
			if hangup != nil {
				s.hold(c, hangup)
			}
		}()
	}
}

// exchange reads one request from c and answers it. It closes c, unless the
// handler asked to keep it: then it returns the hangup function.
func (s *Server) exchange(c *net.UnixConn) (hangup func()) {
	defer func() {
		if hangup == nil {
			c.Close()
		}
	}()
	c.SetDeadline(time.Now().Add(IOTimeout))
	cred, err := PeerCred(c)
	if err != nil {
		s.log.Debug("control: peer credentials", "err", err)
		return nil
	}
	line, files, reqErr := readRequest(c)
	if !trusted(cred.UID, os.Geteuid()) {
		closeFiles(files)
		s.log.Debug("control: refused a foreign client", "uid", cred.UID, "pid", cred.PID)
		writeLine(c, Response{Error: fmt.Sprintf("permission denied: this usltun daemon (uid %d) serves only root and its own user, not uid %d", os.Geteuid(), cred.UID)})
		return nil
	}
	var req Request
	if reqErr == nil {
		reqErr = json.Unmarshal(line, &req)
	}
	if reqErr != nil {
		closeFiles(files)
		s.log.Debug("control: read request", "err", reqErr)
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), IOTimeout)
	defer cancel()
	var resp Response
	body, hangup, err := s.handler(ctx, req, files)
	if err == nil {
		resp.Body, err = json.Marshal(body)
	}
	if err != nil {
		resp = Response{Error: err.Error()}
	}
	if err := writeLine(c, resp); err != nil {
		s.log.Debug("control: write response", "err", err)
		if hangup != nil {
			hangup()
		}
		return nil
	}
	if resp.Error != "" && hangup != nil {
		hangup()
		return nil
	}
	return hangup
}

// hold keeps c open until the client closes it or the server closes, then
// calls hangup.
func (s *Server) hold(c *net.UnixConn, hangup func()) {
	s.mu.Lock()
	s.held[c] = struct{}{}
	s.mu.Unlock()
	c.SetDeadline(time.Time{})
	var b [64]byte
	for {
		if _, err := c.Read(b[:]); err != nil {
			break
		}
	}
	s.mu.Lock()
	delete(s.held, c)
	s.mu.Unlock()
	c.Close()
	hangup()
}

// readRequest reads the request line and any descriptors sent with it.
func readRequest(c *net.UnixConn) ([]byte, []*os.File, error) {
	var line []byte
	var files []*os.File
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*4))
	for len(line) < MaxMessage {
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		n, oobn = max(n, 0), max(oobn, 0) // -1 with some errors
		if oobn > 0 {
			files = append(files, parseRights(oob[:oobn])...)
		}
		line = append(line, buf[:n]...)
		if i := bytes.IndexByte(line, '\n'); i >= 0 {
			if len(files) > maxFiles {
				closeFiles(files[maxFiles:])
				files = files[:maxFiles]
			}
			return line[:i], files, nil
		}
		if err != nil {
			closeFiles(files)
			if err == io.EOF {
				err = fmt.Errorf("connection closed before a complete request (%d bytes)", len(line))
			}
			return nil, nil, err
		}
	}
	closeFiles(files)
	return nil, nil, fmt.Errorf("request exceeds %d bytes", MaxMessage)
}

// parseRights returns the descriptors of SCM_RIGHTS messages, close-on-exec
// and non-blocking (so that the runtime's poller serves them).
func parseRights(oob []byte) []*os.File {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			unix.SetNonblock(fd, true)
			files = append(files, os.NewFile(uintptr(fd), "passed-fd"))
		}
	}
	return files
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// Close stops accepting, waits for exchanges in progress, and removes a
// path socket.
func (s *Server) Close() error {
	err := s.ln.Close()
	<-s.done
	s.mu.Lock()
	for c := range s.held {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

// ErrNoDaemon is returned by Call when nothing listens at the path.
var ErrNoDaemon = errors.New("no usltun daemon for this user")

// Call sends req to the daemon at path and decodes the response body into
// out. It refuses to talk to a server that is neither root nor this user.
func Call(ctx context.Context, path string, req Request, out any) error {
	c, err := roundTrip(ctx, path, req, nil, out)
	if c != nil {
		c.Close()
	}
	return err
}

// Hold is Call for a request the daemon keeps open (attach-tun), with
// files passed along: on success the returned connection stays open until
// the caller closes it, which ends what the request started.
func Hold(ctx context.Context, path string, req Request, files []*os.File, out any) (io.Closer, error) {
	c, err := roundTrip(ctx, path, req, files, out)
	if err != nil {
		if c != nil {
			c.Close()
		}
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

func roundTrip(ctx context.Context, path string, req Request, files []*os.File, out any) (*net.UnixConn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("%w answers on %s (start one with `usltun up ...`; in another network namespace or with another --tun it has another socket): %v", ErrNoDaemon, path, err)
	}
	c := nc.(*net.UnixConn)
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	cred, err := PeerCred(c)
	if err != nil {
		return c, fmt.Errorf("control socket %s: %w", path, err)
	}
	if !trusted(cred.UID, os.Geteuid()) {
		return c, fmt.Errorf("control socket %s is served by uid %d (pid %d), neither root nor you: not trusting what it says (someone else bound the name first?)", path, cred.UID, cred.PID)
	}
	werr := writeRequest(c, req, files)
	var resp Response
	if err := readLine(c, &resp); err != nil {
		// A server that refused us may have answered and closed before
		// our request arrived: its answer, when there is one, says more.
		if werr != nil {
			return c, fmt.Errorf("control socket %s: send request: %w", path, werr)
		}
		return c, fmt.Errorf("control socket %s: read response (is the daemon an older usltun?): %w", path, err)
	}
	if resp.Error != "" {
		return c, fmt.Errorf("daemon on %s: %s", path, resp.Error)
	}
	if out == nil {
		return c, nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = append((*raw)[:0], resp.Body...)
		return c, nil
	}
	if err := json.Unmarshal(resp.Body, out); err != nil {
		return c, fmt.Errorf("daemon on %s sent a %s response this build cannot read (version mismatch?): %w", path, req.Op, err)
	}
	return c, nil
}

// writeRequest sends the request line in one sendmsg, with files as
// SCM_RIGHTS.
func writeRequest(c *net.UnixConn, req Request, files []*os.File) error {
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	_, _, err = c.WriteMsgUnix(append(b, '\n'), oob, nil)
	return err
}

// PeerCred is the kernel's record of the process at the other end of c.
func PeerCred(c *net.UnixConn) (Cred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Cred{}, err
	}
	var uc *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		uc, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Cred{}, err
	}
	if serr != nil {
		return Cred{}, fmt.Errorf("SO_PEERCRED: %w", serr)
	}
	return Cred{UID: uc.Uid, GID: uc.Gid, PID: uc.Pid}, nil
}

func writeLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) >= MaxMessage {
		return fmt.Errorf("message of %d bytes exceeds %d", len(b), MaxMessage)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// readLine reads one newline-terminated JSON message of at most MaxMessage
// bytes into v.
func readLine(r io.Reader, v any) error {
	line, err := bufio.NewReaderSize(io.LimitReader(r, MaxMessage), 4096).ReadBytes('\n')
	if err != nil {
		if err == io.EOF {
			return fmt.Errorf("connection closed before a complete message (%d bytes)", len(line))
		}
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	return dec.Decode(v)
}
