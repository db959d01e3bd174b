package main

// usltun exec runs one command in a network namespace of its own whose only
// way out is the running daemon, without root:
//
//  1. `usltun exec` (the calling user) checks that user namespaces and
//     /dev/net/tun are usable and that the user's daemon answers.
//  2. It re-executes itself as the namespace helper with Cloneflags
//     CLONE_NEWUSER|CLONE_NEWNET|CLONE_NEWNS, mapping uid 0 of the new user
//     namespace to the caller. Namespaces are created by the kernel at
//     clone, in the single-threaded child, not by unshare in this Go
//     process.
//  3. The helper, root in its namespaces only, brings lo up, creates a TUN
//     device with default routes (tun.Create, netlink), bind-mounts a
//     resolv.conf naming execDNS over /etc/resolv.conf, and passes the
//     device's descriptor back over a socketpair.
//  4. `usltun exec` hands the descriptor to the daemon over the control
//     socket (attach-tun, SCM_RIGHTS) and keeps that connection open: the
//     daemon serves the device with a netstack of its own, like usl0, and
//     detaches when the connection closes.
//  5. The helper then starts CMD in one more user namespace, nested in the
//     first, that maps the caller's uid to the helper's 0: CMD runs with the
//     caller's uid and, having exec'd as a non-root uid, with no
//     capabilities, so it cannot change the namespace's network.
//  6. CMD's exit status is exec's. It shares the caller's terminal and
//     process group, so the terminal's SIGINT, SIGQUIT and SIGWINCH reach it
//     directly; SIGTERM and SIGHUP (and, without a terminal, SIGINT) sent to
//     exec are passed on through the helper.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/usltun/usltun/control"
	"github.com/usltun/usltun/tun"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

type execCmd struct {
	Route   []netip.Prefix `placeholder:"PREFIX" help:"Send only this subnet through the tunnel (repeatable); the command reaches other destinations from this host's network directly. Default: everything through the tunnel."`
	Name    string         `help:"Name of this namespace in the daemon's logs (default: the command's name)."`
	Tun     string         `default:"usl0" help:"Device name of the daemon to use (its --tun)."`
	Control string         `placeholder:"PATH" help:"Control socket of the daemon (default: $XDG_RUNTIME_DIR/usltun/<tun>.sock for a user)."`
	Cmd     []string       `arg:"" passthrough:"" name:"command" help:"The command and its arguments, after --."`
}

// helperArg is argv[1] of the re-executed namespace helper.
const helperArg = "__usltun-exec-helper"

// helperEnv carries the helper's configuration (JSON of helperConfig).
const helperEnv = "USLTUN_EXEC_HELPER"

type helperConfig struct {
	Argv []string `json:"argv"`
	UID  int      `json:"uid"`
	GID  int      `json:"gid"`
	TTY  bool     `json:"tty"`
}

// helperHello is what the helper sends with the TUN descriptor, or Error
// instead of it.
type helperHello struct {
	MTU     int    `json:"mtu"`
	Offload int    `json:"offload"`
	Error   string `json:"error,omitempty"`
}

func (c *execCmd) Validate() error {
	if len(c.Cmd) > 0 && c.Cmd[0] == "--" {
		c.Cmd = c.Cmd[1:]
	}
	if len(c.Cmd) == 0 {
		return errors.New("give the command to run after --: usltun exec -- CMD [ARGS...]")
	}
	for _, p := range c.Route {
		if p != p.Masked() {
			return fmt.Errorf("--route %s has host bits set: did you mean %s?", p, p.Masked())
		}
	}
	return nil
}

func (c *execCmd) Run() error {
	if err := checkUserNamespaces(); err != nil {
		return err
	}
	if err := checkTunAccess(); err != nil {
		return err
	}
	path, err := controlPath(c.Control, c.Tun)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := control.Call(ctx, path, control.Request{Op: control.OpStatus}, nil); err != nil {
		if errors.Is(err, control.ErrNoDaemon) {
			return fmt.Errorf("no usltun daemon for this user: start one with `usltun up ...` (nothing answers on %s)", path)
		}
		return err
	}
	name := c.Name
	if name == "" {
		name = filepath.Base(c.Cmd[0])
	}
	code, err := c.run(ctx, path, name)
	if err != nil {
		return err
	}
	os.Exit(code)
	return nil
}

// run starts the helper, attaches its device to the daemon and waits for
// the command; it returns the command's exit status.
func (c *execCmd) run(ctx context.Context, path, name string) (int, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("socketpair: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(pair[0]), "exec-ours"), os.NewFile(uintptr(pair[1]), "exec-helper")
	defer ours.Close()
	tty := isTerminal(os.Stdin)
	cfg, _ := json.Marshal(helperConfig{Argv: c.Cmd, UID: os.Getuid(), GID: os.Getgid(), TTY: tty})
	self, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("find own binary: %w", err)
	}
	h := exec.Command(self, helperArg)
	h.Env = append(os.Environ(), helperEnv+"="+string(cfg))
	h.Stdin, h.Stdout, h.Stderr = os.Stdin, os.Stdout, os.Stderr
	h.ExtraFiles = []*os.File{theirs}
	h.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:                 syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET | syscall.CLONE_NEWNS,
		UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
		GidMappingsEnableSetgroups: false,
		Pdeathsig:                  syscall.SIGKILL,
	}
	// Catch the signals before the helper exists, so none is lost between.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGWINCH)
	defer signal.Stop(sigs)
	if err := h.Start(); err != nil {
		theirs.Close()
		return 0, userNamespaceError(err)
	}
	theirs.Close()
	exited := make(chan error, 1)
	go func() { exited <- h.Wait() }()

	hold, err := c.attach(ctx, ours, path, name)
	if err != nil {
		h.Process.Kill()
		<-exited
		return 0, err
	}
	defer hold.Close()
	// The go-ahead: the helper starts the command.
	if _, err := ours.Write([]byte{1}); err != nil {
		h.Process.Kill()
		<-exited
		return 0, fmt.Errorf("exec helper: %w", err)
	}
	for {
		select {
		case sig := <-sigs:
			if forwardSignal(sig.(syscall.Signal), tty) {
				h.Process.Signal(sig)
			}
		case err := <-exited:
			return exitCode(err), nil
		}
	}
}

// attach receives the helper's TUN descriptor and hands it to the daemon.
func (c *execCmd) attach(ctx context.Context, ours *os.File, path, name string) (interface{ Close() error }, error) {
	conn, err := net.FileConn(ours)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	uc := conn.(*net.UnixConn)
	uc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil || n <= 0 {
		return nil, fmt.Errorf("exec helper: no device (%v): it reported its error above", err)
	}
	var hello helperHello
	if err := json.Unmarshal(buf[:n], &hello); err != nil {
		return nil, fmt.Errorf("exec helper: %w", err)
	}
	if hello.Error != "" {
		return nil, errors.New(hello.Error)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, errors.New("exec helper: no descriptor with its message")
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return nil, errors.New("exec helper: no descriptor with its message")
	}
	dev := os.NewFile(uintptr(fds[0]), "tun")
	defer dev.Close() // the daemon has its own copy once attached
	routes := make([]string, len(c.Route))
	for i, r := range c.Route {
		routes[i] = r.String()
	}
	req := control.Request{Op: control.OpAttachTUN, Attach: &control.Attach{Name: name, MTU: hello.MTU, Offload: hello.Offload, Routes: routes}}
	hold, err := control.Hold(ctx, path, req, []*os.File{dev}, nil)
	if err != nil {
		return nil, fmt.Errorf("attach the namespace to the daemon: %w", err)
	}
	return hold, nil
}

// forwardSignal reports whether exec passes sig on. With a terminal, the
// terminal's own signals already reach the command, which shares its
// process group: passing them on would deliver them twice.
func forwardSignal(sig syscall.Signal, tty bool) bool {
	switch sig {
	case syscall.SIGINT, syscall.SIGQUIT, syscall.SIGWINCH:
		return !tty
	}
	return true
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if err == nil {
		return 0
	}
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return 1
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// checkUserNamespaces names the setting that keeps an ordinary user from
// creating a user namespace, if one does.
func checkUserNamespaces() error {
	read := func(p string) string {
		b, _ := os.ReadFile(p)
		return strings.TrimSpace(string(b))
	}
	if read("/proc/sys/user/max_user_namespaces") == "0" {
		return errors.New("user namespaces are disabled (sysctl user.max_user_namespaces = 0): as root, `sysctl -w user.max_user_namespaces=15000` enables them")
	}
	if read("/proc/sys/kernel/unprivileged_userns_clone") == "0" {
		return errors.New("unprivileged user namespaces are disabled (sysctl kernel.unprivileged_userns_clone = 0): as root, `sysctl -w kernel.unprivileged_userns_clone=1` enables them")
	}
	if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1" {
		return errors.New("AppArmor restricts unprivileged user namespaces (sysctl kernel.apparmor_restrict_unprivileged_userns = 1): give usltun an AppArmor profile that allows `userns,`, or as root `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`")
	}
	return nil
}

// userNamespaceError explains a failed clone of the helper.
func userNamespaceError(err error) error {
	switch {
	case errors.Is(err, syscall.ENOSPC):
		return fmt.Errorf("cannot create a user namespace: the limit user.max_user_namespaces is reached (%v)", err)
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return fmt.Errorf("cannot create a user namespace (%v): unprivileged user namespaces are restricted here (sysctl kernel.apparmor_restrict_unprivileged_userns, kernel.unprivileged_userns_clone, or a container's seccomp profile)", err)
	}
	return fmt.Errorf("start the exec helper: %w", err)
}

// checkTunAccess fails with the fix when /dev/net/tun cannot be opened.
func checkTunAccess() error {
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err == nil {
		f.Close()
		return nil
	}
	if errors.Is(err, os.ErrNotExist) {
		return errors.New("/dev/net/tun does not exist: as root, `modprobe tun` (and mknod /dev/net/tun c 10 200 in a container)")
	}
	mode := ""
	if fi, serr := os.Stat("/dev/net/tun"); serr == nil {
		mode = fmt.Sprintf(" (mode %04o)", fi.Mode().Perm())
	}
	return fmt.Errorf("/dev/net/tun is not accessible to you%s: give it the mode Debian and Fedora give it, as root `chmod 0666 /dev/net/tun`", mode)
}

// runExecHelper is the helper's main: root in fresh user, network and mount
// namespaces. fd 3 is the socketpair to `usltun exec`.
func runExecHelper() int {
	var cfg helperConfig
	if err := json.Unmarshal([]byte(os.Getenv(helperEnv)), &cfg); err != nil || len(cfg.Argv) == 0 {
		fmt.Fprintln(os.Stderr, "usltun: the exec helper is started by `usltun exec`, not by hand")
		return 2
	}
	os.Unsetenv(helperEnv)
	link := os.NewFile(3, "exec-link")
	conn, err := net.FileConn(link)
	link.Close()
	if err != nil {
		fmt.Fprintf(os.Stderr, "usltun: exec helper: %v\n", err)
		return 1
	}
	uc := conn.(*net.UnixConn)
	fail := func(err error) int {
		b, _ := json.Marshal(helperHello{Error: err.Error()})
		uc.Write(b)
		return 1
	}
	dev, err := setUpNamespace()
	if err != nil {
		return fail(err)
	}
	defer dev.Close()
	hello, _ := json.Marshal(helperHello{MTU: execMTU, Offload: int(dev.Offload())})
	if _, _, err := uc.WriteMsgUnix(hello, unix.UnixRights(int(dev.File().Fd())), nil); err != nil {
		fmt.Fprintf(os.Stderr, "usltun: exec helper: pass the device: %v\n", err)
		return 1
	}
	var goAhead [1]byte
	if n, _ := uc.Read(goAhead[:]); n != 1 {
		return 1 // exec gave up; it reports why
	}
	return runCommand(cfg)
}

// setUpNamespace brings lo up, creates the TUN device with default routes
// and puts a resolv.conf naming execDNS over /etc/resolv.conf.
func setUpNamespace() (*tun.Device, error) {
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		return nil, fmt.Errorf("namespace: bring lo up: %w", err)
	}
	dev, err := tun.Create(tun.Config{
		Name:   "usl0",
		MTU:    execMTU,
		Addrs:  execAddrs,
		Routes: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")},
	})
	if err != nil {
		return nil, fmt.Errorf("namespace: %w", err)
	}
	if err := bindResolvConf(); err != nil {
		dev.Close()
		return nil, err
	}
	return dev, nil
}

// bindResolvConf makes /etc/resolv.conf, in this mount namespace only,
// name the daemon's DNS address: the host's (often 127.0.0.53) is
// unreachable from here.
func bindResolvConf() error {
	f, err := os.CreateTemp("", "usltun-exec-resolv-")
	if err != nil {
		return fmt.Errorf("namespace: resolv.conf: %w", err)
	}
	defer os.Remove(f.Name()) // the bind mount keeps the file
	fmt.Fprintf(f, "# usltun exec: names are resolved by the peer's resolver\nnameserver %s\n", execDNS)
	f.Chmod(0o644)
	f.Close()
	if err := unix.Mount(f.Name(), "/etc/resolv.conf", "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("namespace: bind-mount resolv.conf over /etc/resolv.conf: %w", err)
	}
	return nil
}

// runCommand starts the command in a nested user namespace that maps the
// caller's uid to our 0, so it runs as the caller with no capabilities,
// passes signals on and returns its exit status.
func runCommand(cfg helperConfig) int {
	argv0, err := exec.LookPath(cfg.Argv[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "usltun exec: %v\n", err)
		return 127
	}
	cmd := exec.Command(argv0, cfg.Argv[1:]...)
	cmd.Args[0] = cfg.Argv[0]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:                 syscall.CLONE_NEWUSER,
		UidMappings:                []syscall.SysProcIDMap{{ContainerID: cfg.UID, HostID: 0, Size: 1}},
		GidMappings:                []syscall.SysProcIDMap{{ContainerID: cfg.GID, HostID: 0, Size: 1}},
		GidMappingsEnableSetgroups: false,
		Credential:                 &syscall.Credential{Uid: uint32(cfg.UID), Gid: uint32(cfg.GID), NoSetGroups: true},
		Pdeathsig:                  syscall.SIGKILL,
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGWINCH)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "usltun exec: %v\n", err)
		return 126
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case sig := <-sigs:
			if forwardSignal(sig.(syscall.Signal), cfg.TTY) {
				cmd.Process.Signal(sig)
			}
		case err := <-done:
			return exitCode(err)
		}
	}
}
