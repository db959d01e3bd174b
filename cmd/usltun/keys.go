package main

import (
	"fmt"
	"io"
	"os"

	"github.com/usltun/usltun/usl"
)

type genkeyCmd struct{}

// Run prints a private key. Like `wg genkey`, it warns when stdout is a file
// that others can read, since the key is the host's whole identity.
func (genkeyCmd) Run() error {
	k, err := usl.GeneratePrivateKey()
	if err != nil {
		return err
	}
	if fi, err := os.Stdout.Stat(); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o077 != 0 {
		if err := os.Stdout.Chmod(0o600); err != nil {
			fmt.Fprintf(os.Stderr, "usltun: warning: the key file is readable by others and chmod failed: %v\n", err)
		}
	}
	_, err = fmt.Println(k.String())
	return err
}

type pubkeyCmd struct{}

func (pubkeyCmd) Run() error {
	b, err := io.ReadAll(io.LimitReader(os.Stdin, 4096))
	if err != nil {
		return fmt.Errorf("read private key from stdin: %w", err)
	}
	k, err := usl.ParsePrivateKey(string(b))
	if err != nil {
		return fmt.Errorf("stdin: %w", err)
	}
	_, err = fmt.Println(k.Public().String())
	return err
}

// readPrivateKey loads a key file written by `usltun genkey`.
func readPrivateKey(path string) (usl.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return usl.PrivateKey{}, fmt.Errorf("key file: %w (create one with: usltun genkey > %s)", err, path)
	}
	k, err := usl.ParsePrivateKey(string(b))
	if err != nil {
		return usl.PrivateKey{}, fmt.Errorf("key file %s: %w", path, err)
	}
	return k, nil
}
