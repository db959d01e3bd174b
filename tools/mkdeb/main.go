// Command mkdeb builds usltun's Debian package with nfpm: the binary, the
// systemd unit, shell completions, the manual page and an example
// configuration under /etc/usltun. Completions and the manual page are the
// binary's own output (usltun completion SHELL, usltun man), so they match
// the CLI they come with. `make deb` runs it:
//
//	go run ./tools/mkdeb --binary bin/usltun --version $(git describe --tags --always --dirty) --out bin/
package main

import (
	"bytes"
	"compress/gzip"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"
)

func main() {
	binary := flag.String("binary", "bin/usltun", "the usltun binary to package")
	version := flag.String("version", "", "the version usltun reports (git describe)")
	out := flag.String("out", "bin", "directory for the .deb")
	root := flag.String("root", ".", "the source tree (for contrib/)")
	flag.Parse()
	path, err := build(*binary, *version, *out, *root)
	if err != nil {
		fmt.Fprintf(os.Stderr, "mkdeb: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(path)
}

// releaseTag is how a git describe of a tagged tree starts: v1.2 or 1.2.
var releaseTag = regexp.MustCompile(`^v?[0-9]+\.[0-9]+`)

// debVersion turns a git describe string into a Debian version. A tagged
// describe (v1.2.0-3-gabc1234) keeps its numbers, with '-' (Debian's
// revision separator) replaced by '+'; a bare commit hash, which is what
// describe gives without tags, becomes 0~git+HASH, so it sorts below any
// release.
func debVersion(describe string) string {
	v := strings.ReplaceAll(describe, "-", "+")
	if releaseTag.MatchString(v) {
		return strings.TrimPrefix(v, "v")
	}
	return "0~git+" + v
}

func build(binary, version, outDir, root string) (string, error) {
	if version == "" {
		return "", fmt.Errorf("--version is required (make deb passes git describe)")
	}
	gen := filepath.Join(outDir, "deb-files")
	if err := os.MkdirAll(gen, 0o755); err != nil {
		return "", err
	}
	// Generated files, from the binary itself.
	type genFile struct {
		args []string
		name string
		gz   bool
	}
	for _, g := range []genFile{
		{[]string{"completion", "bash"}, "usltun.bash", false},
		{[]string{"completion", "zsh"}, "_usltun", false},
		{[]string{"completion", "fish"}, "usltun.fish", false},
		{[]string{"man"}, "usltun.1.gz", true},
	} {
		b, err := exec.Command(binary, g.args...).Output()
		if err != nil {
			return "", fmt.Errorf("%s %s: %w", binary, strings.Join(g.args, " "), err)
		}
		if g.gz {
			var z bytes.Buffer
			zw, _ := gzip.NewWriterLevel(&z, gzip.BestCompression)
			zw.Write(b)
			zw.Close()
			b = z.Bytes()
		}
		if err := os.WriteFile(filepath.Join(gen, g.name), b, 0o644); err != nil {
			return "", err
		}
	}
	mode := func(m os.FileMode) *files.ContentFileInfo { return &files.ContentFileInfo{Mode: m} }
	info := &nfpm.Info{
		Name:          "usltun",
		Arch:          runtime.GOARCH,
		Platform:      "linux",
		Version:       debVersion(version),
		VersionSchema: "none",
		Section:       "net",
		Priority:      "optional",
		Maintainer:    "usltun maintainers <maintainers@usltun.invalid>",
		Description:   "Unstoppable Session Layer tunnel\nA TUN device whose TCP and UDP flows are carried as streams of one\nresumable, encrypted session: a dying link is a pause, never an error.",
		Homepage:      "https://github.com/usltun/usltun",
		License:       "see /usr/share/doc/usltun",
		MTime:         time.Unix(0, 0).UTC(),
		Overridables: nfpm.Overridables{
			Contents: files.Contents{
				{Source: binary, Destination: "/usr/bin/usltun", FileInfo: mode(0o755)},
				{Source: filepath.Join(root, "contrib/systemd/usltun@.service"), Destination: "/lib/systemd/system/usltun@.service", FileInfo: mode(0o644)},
				{Source: filepath.Join(root, "contrib/systemd/user/usltun@.service"), Destination: "/usr/lib/systemd/user/usltun@.service", FileInfo: mode(0o644)},
				{Source: filepath.Join(gen, "usltun.bash"), Destination: "/usr/share/bash-completion/completions/usltun", FileInfo: mode(0o644)},
				{Source: filepath.Join(gen, "_usltun"), Destination: "/usr/share/zsh/vendor-completions/_usltun", FileInfo: mode(0o644)},
				{Source: filepath.Join(gen, "usltun.fish"), Destination: "/usr/share/fish/vendor_completions.d/usltun.fish", FileInfo: mode(0o644)},
				{Source: filepath.Join(gen, "usltun.1.gz"), Destination: "/usr/share/man/man1/usltun.1.gz", FileInfo: mode(0o644)},
				{Destination: "/etc/usltun", Type: files.TypeDir, FileInfo: mode(0o700)},
				{Source: filepath.Join(root, "contrib/example.toml"), Destination: "/etc/usltun/example.toml", Type: files.TypeConfigNoReplace, FileInfo: mode(0o600)},
			},
			Scripts: nfpm.Scripts{
				PostInstall: filepath.Join(root, "contrib/deb/postinst"),
				PostRemove:  filepath.Join(root, "contrib/deb/postrm"),
			},
		},
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return "", fmt.Errorf("prepare: %w", err)
	}
	path := filepath.Join(outDir, deb.Default.ConventionalFileName(info))
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	if err := deb.Default.Package(info, f); err != nil {
		f.Close()
		os.Remove(path)
		return "", fmt.Errorf("package: %w", err)
	}
	return path, f.Close()
}
