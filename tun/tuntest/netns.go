// Package tuntest runs tests inside a throwaway network namespace, so TUN
// devices, routes and sockets they create never touch the host's network.
package tuntest

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NS is a named network namespace owned by one test.
type NS struct {
	Name string
	h    netns.NsHandle
}

var seq atomic.Uint32 // distinguishes namespaces of parallel tests in one process

// NewNS creates a namespace named tn<pid>-<n> with lo up, and deletes it when
// the test ends, whether it passed or not. It skips the test when not root.
func NewNS(t testing.TB) *NS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	name := fmt.Sprintf("tn%d-%d", os.Getpid(), seq.Add(1))
	if err := prepareRunNetns(); err != nil {
		t.Fatalf("prepare /run/netns: %v", err)
	}
	h, err := create(name)
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	ns := &NS{Name: name, h: h}
	t.Cleanup(func() {
		h.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	if err := ns.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		t.Fatalf("netns %s: lo up: %v", name, err)
	}
	return ns
}

// prepareRunNetns makes /run/netns a shared mount point, as iproute2 does
// before its first "ip netns add". Without it, a namespace mounted here
// before someone else runs ip ends up hidden under ip's bind mount, and
// can no longer be deleted.
func prepareRunNetns() error {
	const dir = "/run/netns"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err != unix.EINVAL {
		return err
	}
	// Not a mount point yet: bind it onto itself first.
	if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return err
	}
	return unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
}

func create(name string) (netns.NsHandle, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return netns.None(), err
	}
	defer orig.Close()
	h, err := netns.NewNamed(name) // also moves this thread into it
	if serr := netns.Set(orig); serr != nil {
		// Leave the thread locked: it is destroyed with this goroutine's
		// thread instead of running other goroutines in the wrong namespace.
		if err == nil {
			h.Close()
			netns.DeleteNamed(name)
		}
		return netns.None(), fmt.Errorf("return to original netns: %w", serr)
	}
	runtime.UnlockOSThread()
	return h, err
}

// Do runs fn on an OS thread that is inside the namespace. Sockets, TUN
// devices and netlink handles created by fn stay in the namespace after Do
// returns and may be used from any goroutine.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return // thread exits locked
		}
		defer orig.Close()
		if err := netns.Set(ns.h); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", ns.Name, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- ferr // thread exits locked and is discarded
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
