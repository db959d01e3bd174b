package main

import (
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"

	"github.com/usltun/usltun/usl"
)

type genkeyCmd struct{}

// Run prints a private key. When stdout is a regular file (usltun genkey >
// FILE), the shell created it with the umask's mode before usltun started;
// the mode is made 0600 before the first byte is written, and if that is
// impossible nothing is written at all.
func (genkeyCmd) Run(o cmdIO) error {
	if f, ok := o.stdout.(*os.File); ok {
		if err := makePrivate(f); err != nil {
			return err
		}
	}
	k, err := usl.GeneratePrivateKey()
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(o.stdout, k.String())
	return err
}

// makePrivate makes f, if it is a regular file, readable by its owner only.
func makePrivate(f *os.File) error {
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o077 == 0 {
		return nil // a terminal or a pipe: there is no mode to fix
	}
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("stdout is a file others can read (mode %04o) and it cannot be made private (%v), so no key was written: create it with (umask 077; usltun genkey > FILE)", fi.Mode().Perm(), err)
	}
	return nil
}

type pubkeyCmd struct{}

func (pubkeyCmd) Run(o cmdIO) error {
	b, err := io.ReadAll(io.LimitReader(os.Stdin, 4096))
	if err != nil {
		return fmt.Errorf("read private key from stdin: %w", err)
	}
	k, err := usl.ParsePrivateKey(string(b))
	if err != nil {
		return fmt.Errorf("stdin: %w", err)
	}
	_, err = fmt.Fprintln(o.stdout, k.Public().String())
	return err
}

// readPrivateKey loads a key file written by `usltun genkey`. Like wg, it
// warns when the file is readable by group or others: the key is the host's
// whole identity. Errors name the file, never its contents.
func readPrivateKey(path string, log *slog.Logger) (usl.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return usl.PrivateKey{}, fmt.Errorf("key file: %w (create one with: (umask 077; usltun genkey > %s))", err, path)
	}
	if fi, err := os.Stat(path); err == nil && keyModeExposed(fi.Mode()) {
		log.Warn(fmt.Sprintf("key file %s is readable by others (mode %04o): fix it with: chmod 600 %s", path, fi.Mode().Perm(), path))
	}
	k, err := usl.ParsePrivateKey(string(b))
	if err != nil {
		return usl.PrivateKey{}, fmt.Errorf("key file %s: %w", path, err)
	}
	return k, nil
}

// keyModeExposed reports whether group or others may read or write a key
// file with mode m.
func keyModeExposed(m fs.FileMode) bool { return m.Perm()&0o066 != 0 }
