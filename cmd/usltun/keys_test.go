package main

import (
	"bytes"
	"encoding/base64"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/usltun/usltun/testenv"
	"github.com/usltun/usltun/usl"
)

// genkey into a file the shell created 0644 leaves it 0600 with a valid key.
func TestGenkeyMakesItsFilePrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.key")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o644) // whatever the umask
	code := run([]string{"genkey"}, f, os.Stderr)
	f.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if code != exitOK || fi.Mode().Perm() != 0o600 {
		t.Fatalf("exit %d, mode %04o; want 0 and 0600", code, fi.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	if _, err := usl.ParsePrivateKey(string(b)); err != nil {
		t.Fatalf("genkey wrote %d bytes that do not parse: %v", len(b), err)
	}
}

// A user who cannot make the file private (not its owner) gets nothing
// written and a line saying how to do it.
func TestGenkeyRefusesAFileItCannotProtect(t *testing.T) {
	requireE2E(t)
	dir, err := os.MkdirTemp("", "usltun-genkey-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	path := filepath.Join(dir, "shared.key")
	if err := os.WriteFile(path, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o666) // root owns it; nobody may write but not chmod it
	bin := filepath.Join(dir, "usltun")
	if err := copyFile(e2eBinary, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "genkey")
	cmd.Stdout, cmd.Stderr = f, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	err = cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitRuntime {
		t.Fatalf("genkey as nobody: %v, want exit 1; stderr %q", err, stderr.String())
	}
	if b, _ := os.ReadFile(path); len(b) != 0 {
		t.Fatalf("%d bytes written to a file others can read", len(b))
	}
	if !strings.Contains(stderr.String(), "umask 077") {
		t.Fatalf("stderr %q does not say how", stderr.String())
	}
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, mode)
}

// A key file others can read is used, with a warning naming the fix.
func TestKeyFileModeWarning(t *testing.T) {
	k, _ := usl.GeneratePrivateKey()
	for mode, warn := range map[os.FileMode]bool{0o600: false, 0o400: false, 0o640: true, 0o644: true, 0o602: true} {
		path := filepath.Join(t.TempDir(), "k")
		os.WriteFile(path, []byte(k.String()+"\n"), 0o600)
		os.Chmod(path, mode)
		var logs bytes.Buffer
		got, err := readPrivateKey(path, slog.New(slog.NewTextHandler(&logs, nil)))
		if err != nil || got != k {
			t.Fatalf("mode %04o: %v", mode, err)
		}
		if warned := strings.Contains(logs.String(), "chmod 600 "+path); warned != warn {
			t.Errorf("mode %04o: warned %v, want %v: %q", mode, warned, warn, logs.String())
		}
		if strings.Contains(logs.String(), k.String()) {
			t.Errorf("mode %04o: the warning contains the key", mode)
		}
	}
}

// keyForms are the texts of a private key that must never be printed.
func keyForms(k usl.PrivateKey) []string {
	return []string{k.String(), base64.RawStdEncoding.EncodeToString(k[:]), base64.URLEncoding.EncodeToString(k[:])[:40]}
}

// A broken key file's error names the file, never what is in it.
func TestKeyErrorsDoNotEchoTheFile(t *testing.T) {
	k, _ := usl.GeneratePrivateKey()
	for _, content := range []string{k.String() + "x", k.String()[:40], k.String() + "\n" + k.String()} {
		path := filepath.Join(t.TempDir(), "bad.key")
		os.WriteFile(path, []byte(content), 0o600)
		_, err := readPrivateKey(path, slog.New(slog.DiscardHandler))
		if err == nil {
			t.Fatalf("%q parsed", content)
		}
		for _, f := range append(keyForms(k), content, k.String()[:20]) {
			if strings.Contains(err.Error(), f) {
				t.Fatalf("error %q contains key material", err)
			}
		}
	}
}

// A running daemon, at debug level, never prints its private key: not in
// its logs, not in status (text or JSON).
func TestPrivateKeyNeverPrinted(t *testing.T) {
	requireE2E(t)
	h := testenv.NewHost(t, "keys")
	dir := t.TempDir()
	k, _ := usl.GeneratePrivateKey()
	keyFile := filepath.Join(dir, "a.key")
	os.WriteFile(keyFile, []byte(k.String()+"\n"), 0o600)
	d := h.Start(t, "usltun", e2eBinary, "up", "--listen", "127.0.0.1", "--key", keyFile,
		"--peer-key", testPeerKey, "--log-level", "debug")
	var outs []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := h.Run(e2eBinary, "status", "--json")
		if err == nil {
			outs = append(outs, out)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon never answered status: %v: %s", err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	text, err := h.Run(e2eBinary, "status")
	if err != nil {
		t.Fatalf("status: %v: %s", err, text)
	}
	outs = append(outs, text)
	if err := d.Stop(); err != nil {
		t.Logf("stop: %v", err)
	}
	outs = append(outs, d.Output())
	for _, o := range outs {
		for _, f := range keyForms(k) {
			if strings.Contains(o, f) {
				t.Fatalf("private key printed in:\n%s", o)
			}
		}
	}
	if !strings.Contains(text, testPeerKey) {
		t.Fatalf("status does not show the peer key, so the check above proves little:\n%s", text)
	}
}
