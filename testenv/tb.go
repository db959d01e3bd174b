package testenv

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// TB is the part of testing.TB the lab uses; *testing.T and *testing.B
// satisfy it, and so does *Lab for use outside of tests.
//
// Fatalf is only called from the goroutine that created the host or link (as
// testing requires). Faults, which tests often inject from a helper
// goroutine, report through Errorf and a returned error instead.
type TB interface {
	Helper()
	Cleanup(func())
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
}

var _ TB = (*Lab)(nil)

// Lab implements TB for programs that are not tests, such as the demo.
// Cleanups run in reverse order on Close. Fatalf panics with a *FatalError
// after logging; the program should `defer lab.Close()` so the namespaces
// are removed before the panic unwinds further, or recover it with Recover.
type Lab struct {
	log *slog.Logger

	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

// FatalError is the panic value of Lab.Fatalf.
type FatalError struct{ Msg string }

func (e *FatalError) Error() string { return e.Msg }

// NewLab returns a TB for use outside of tests. A nil logger uses
// slog.Default.
func NewLab(log *slog.Logger) *Lab {
	if log == nil {
		log = slog.Default()
	}
	return &Lab{log: log}
}

func (l *Lab) Helper() {}

func (l *Lab) Cleanup(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cleanups = append(l.cleanups, f)
}

func (l *Lab) Logf(format string, args ...any) {
	l.log.Info(fmt.Sprintf(format, args...))
}

func (l *Lab) Errorf(format string, args ...any) {
	l.mu.Lock()
	l.failed = true
	l.mu.Unlock()
	l.log.Error(fmt.Sprintf(format, args...))
}

func (l *Lab) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.Errorf("%s", msg)
	panic(&FatalError{Msg: msg})
}

// Failed reports whether Errorf or Fatalf was called.
func (l *Lab) Failed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failed
}

// Close runs the registered cleanups, newest first. It is safe to call more
// than once; cleanups registered by a cleanup also run.
func (l *Lab) Close() {
	for {
		l.mu.Lock()
		n := len(l.cleanups)
		if n == 0 {
			l.mu.Unlock()
			return
		}
		f := l.cleanups[n-1]
		l.cleanups = l.cleanups[:n-1]
		l.mu.Unlock()
		f()
	}
}

// Recover turns a Lab.Fatalf panic back into an error; other panics
// propagate. Use as `defer lab.Recover(&err)` in a function returning err.
func (l *Lab) Recover(err *error) {
	r := recover()
	if r == nil {
		return
	}
	fe, ok := r.(*FatalError)
	if !ok {
		panic(r)
	}
	*err = fe
}

// CloseOnSignal makes SIGINT and SIGTERM tear the lab down (Close) and exit
// the program with status 130, so a Ctrl-C during a demo leaves nothing
// behind. The returned stop function removes the handler.
func (l *Lab) CloseOnSignal() (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-ch:
			l.log.Warn("tearing the lab down", "signal", sig.String())
			l.Close()
			os.Exit(130)
		case <-done:
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			signal.Stop(ch)
			close(done)
		})
	}
}
