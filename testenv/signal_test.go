package testenv

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHelperLabProcess is not a test: TestCloseOnSignal runs it in a child
// process that builds a lab and waits to be interrupted.
func TestHelperLabProcess(t *testing.T) {
	if os.Getenv("TESTENV_LAB_CHILD") != "1" {
		return
	}
	lab := NewLab(nil)
	lab.CloseOnSignal()
	a, b := NewHost(lab, "a"), NewHost(lab, "b")
	Link(lab, a, b, "10.0.0.1/24", "10.0.0.2/24")
	p := b.Start(lab, "sleeper", "sleep", "600")
	fmt.Printf("READY %s %s %d\n", a.Path(), b.Path(), p.Pid())
	time.Sleep(30 * time.Second)
	os.Exit(3) // not interrupted: the parent reports it
}

func TestCloseOnSignal(t *testing.T) {
	requireRoot(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperLabProcess$")
	cmd.Env = append(os.Environ(), "TESTENV_LAB_CHILD=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	var fields []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
			fields = strings.Fields(rest)
			break
		}
	}
	if len(fields) != 3 {
		t.Fatal("child did not build its lab")
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = sc.Err()
		for sc.Scan() {
		}
	}()
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
		t.Fatalf("child exit: %v, want status 130", err)
	}
	for _, path := range fields[:2] {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s survived the interrupt", path)
		}
	}
	var pid int
	fmt.Sscan(fields[2], &pid)
	if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
		t.Errorf("lab process %d survived the interrupt: %v", pid, err)
	}
}
