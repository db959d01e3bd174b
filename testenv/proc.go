package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// StopTimeout bounds how long Proc.Stop waits after SIGTERM before it
// falls back to SIGKILL.
const StopTimeout = 10 * time.Second

// outputCap bounds the output a Proc keeps for Output (the tail is kept).
const outputCap = 4 << 20

// Proc is a command running inside a host. Its stdout and stderr go to the
// test log line by line, prefixed with "name@host", and are kept for Output.
type Proc struct {
	h    *Host
	t    TB
	name string
	argv []string
	env  []string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when the current incarnation exited
	exitErr error
	out     bytes.Buffer
	partial []byte // unterminated line, per incarnation
	muted   bool   // after the test's cleanup: t.Logf is no longer allowed
}

// Start runs argv inside the host. The process is killed (its whole process
// group) when the test ends, and also if the test binary dies (Pdeathsig).
func (h *Host) Start(t TB, name string, argv ...string) *Proc {
	t.Helper()
	return h.StartEnv(t, name, nil, argv...)
}

// StartEnv is Start with extra environment variables ("K=V"), added to the
// test process's own environment.
func (h *Host) StartEnv(t TB, name string, env []string, argv ...string) *Proc {
	t.Helper()
	if len(argv) == 0 {
		t.Fatalf("testenv: start %s: empty command", name)
	}
	p := &Proc{h: h, t: t, name: name, argv: argv, env: env}
	t.Cleanup(func() {
		p.Kill()
		p.mu.Lock()
		p.muted = true
		p.mu.Unlock()
	})
	if err := p.start(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return p
}

func (p *Proc) start() error {
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout = (*procWriter)(p)
	cmd.Stderr = (*procWriter)(p)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,            // Kill reaches the children too
		Pdeathsig: syscall.SIGKILL, // never outlive a crashed test binary
	}
	// Output goroutines must finish before the test ends, even if a child
	// of the command keeps the pipe open.
	cmd.WaitDelay = 2 * time.Second
	// fork inherits the namespace of the forking thread, which Do has
	// switched into the host.
	if err := p.h.Do(cmd.Start); err != nil {
		return fmt.Errorf("start %s on %s (%v): %w", p.name, p.h, p.argv, err)
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.done, p.exitErr, p.partial = cmd, done, nil, nil
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.exitErr = err
		p.flushPartialLocked()
		p.mu.Unlock()
		close(done)
	}()
	p.logf("started pid %d: %v", cmd.Process.Pid, p.argv)
	return nil
}

// procWriter splits the output into lines for the test log.
type procWriter Proc

func (w *procWriter) Write(b []byte) (int, error) {
	p := (*Proc)(w)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.out.Len()+len(b) > outputCap {
		keep := p.out.Bytes()[p.out.Len()/2:]
		p.out = *bytes.NewBuffer(append([]byte(nil), keep...))
	}
	p.out.Write(b)
	data := append(p.partial, b...)
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		p.logLocked(string(data[:i]))
		data = data[i+1:]
	}
	p.partial = append(p.partial[:0], data...)
	return len(b), nil
}

func (p *Proc) flushPartialLocked() {
	if len(p.partial) > 0 {
		p.logLocked(string(p.partial))
		p.partial = p.partial[:0]
	}
}

func (p *Proc) logLocked(line string) {
	if !p.muted {
		p.t.Logf("[%s@%s] %s", p.name, p.h.label, line)
	}
}

func (p *Proc) logf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.logLocked(fmt.Sprintf(format, args...))
}

// Output is everything the process (all its incarnations) wrote to stdout
// and stderr, up to the last 4 MiB.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Pid of the current incarnation.
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Pid
}

// Done is closed when the current incarnation exits.
func (p *Proc) Done() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// Running reports whether the current incarnation is still alive.
func (p *Proc) Running() bool {
	select {
	case <-p.Done():
		return false
	default:
		return true
	}
}

// Wait waits for the current incarnation to exit, at most timeout, and
// returns its exit error (nil for status 0).
func (p *Proc) Wait(timeout time.Duration) error {
	select {
	case <-p.Done():
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.exitErr
	case <-time.After(timeout):
		return fmt.Errorf("testenv: %s on %s still running after %v", p.name, p.h, timeout)
	}
}

// Stop sends SIGTERM and waits up to StopTimeout for the exit, then kills
// the process group. It returns the exit error of the process (nil if it
// exited with status 0, or if it was not running), or an error saying it
// had to be killed.
func (p *Proc) Stop() error {
	if !p.Running() {
		return nil
	}
	p.mu.Lock()
	proc := p.cmd.Process
	p.mu.Unlock()
	_ = proc.Signal(syscall.SIGTERM)
	err := p.Wait(StopTimeout)
	if p.Running() {
		p.Kill()
		return fmt.Errorf("testenv: %s on %s ignored SIGTERM for %v; killed", p.name, p.h, StopTimeout)
	}
	p.logf("stopped: %v", exitText(err))
	return err
}

// Kill sends SIGKILL to the process group and waits for the exit.
func (p *Proc) Kill() {
	if !p.Running() {
		return
	}
	p.mu.Lock()
	pid := p.cmd.Process.Pid
	p.mu.Unlock()
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = p.Wait(StopTimeout)
	p.logf("killed")
}

// Restart stops the process (SIGTERM, see Stop) if it runs, and starts the
// same command again in the same host. The stop's exit error is not an
// error of Restart.
func (p *Proc) Restart() error {
	_ = p.Stop()
	if err := p.start(); err != nil {
		err = fmt.Errorf("testenv: restart: %w", err)
		p.t.Errorf("%v", err)
		return err
	}
	return nil
}

func exitText(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ProcessState.String()
	}
	if err != nil {
		return err.Error()
	}
	return "exit status 0"
}

// runIn runs a short command inside h and returns its combined output.
func runIn(ctx context.Context, h *Host, argv ...string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("testenv: run: empty command")
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 2 * time.Second
	err := h.Do(cmd.Run)
	if err != nil {
		err = fmt.Errorf("run %v on %s: %w", argv, h, err)
	}
	return out.String(), err
}

// RSS is the resident set size of the current incarnation in bytes, from
// /proc/<pid>/status (VmRSS), for memory-bound assertions.
func (p *Proc) RSS() (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
	if err != nil {
		return 0, fmt.Errorf("testenv: rss of %s: %w", p.name, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("testenv: rss of %s: %q: %w", p.name, line, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("testenv: rss of %s: no VmRSS in /proc/%d/status", p.name, p.Pid())
}

// CPUTime is the user+system CPU time the current incarnation used so far
// (all threads), from /proc/<pid>/stat, in clock ticks of 1/100 s (Linux's
// USER_HZ).
func (p *Proc) CPUTime() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid()))
	if err != nil {
		return 0, fmt.Errorf("testenv: cpu time of %s: %w", p.name, err)
	}
	// The command name in parentheses may hold spaces: fields count from
	// after its closing parenthesis, where utime and stime are the 12th
	// and 13th.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("testenv: cpu time of %s: short /proc/%d/stat", p.name, p.Pid())
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("testenv: cpu time of %s: %q: %w", p.name, s, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}
