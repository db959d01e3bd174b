package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The current wireguard-go, the baseline usltun's targets are set
// against. Debian ships a build of 2022 (0.0.20220316), before the GSO/GRO
// work that made wireguard-go several times faster; it stays in the table
// as a historical row. This version is built from the Go module proxy.
const (
	wgModule  = "golang.zx2c4.com/wireguard"
	wgVersion = "v0.0.0-20260522210424-ecfc5a8d5446"
)

// wireguardGoCurrent returns the path of the current wireguard-go binary:
// the given one, or a `go install` of wgModule@wgVersion into the user's
// cache directory, built once and reused by later runs (the version is
// part of the directory name, so a change of wgVersion builds afresh).
func wireguardGoCurrent(ctx context.Context, given string) (string, error) {
	if given != "" {
		return given, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("cache directory for the wireguard-go build (or pass --wireguard-go): %w", err)
	}
	dir := filepath.Join(cache, "usltun-tunbench", "wireguard-go-"+wgVersion)
	bin := filepath.Join(dir, "wireguard") // go install names it after the module's last element
	if st, err := os.Stat(bin); err == nil && st.Mode().IsRegular() {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("wireguard-go build directory: %w", err)
	}
	progress("building %s@%s (go install, once; cached in %s)", wgModule, wgVersion, dir)
	cmd := exec.CommandContext(ctx, "go", "install", wgModule+"@"+wgVersion)
	// Outside any module, so the repository's go.mod plays no part; GOBIN
	// puts the binary in the cache directory, not in the user's PATH.
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=", "GO111MODULE=on", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install %s@%s: %w\n%s", wgModule, wgVersion, err, strings.TrimSpace(string(out)))
	}
	return bin, nil
}
