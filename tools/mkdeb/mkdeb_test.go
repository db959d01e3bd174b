package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestDebVersion(t *testing.T) {
	for in, want := range map[string]string{
		"v1.2.0":                 "1.2.0",
		"v1.2.0-3-gabc1234":      "1.2.0+3+gabc1234",
		"1.2.0-3-gabc1234-dirty": "1.2.0+3+gabc1234+dirty",
		"6216127":                "0~git+6216127",
		"abc1234-dirty":          "0~git+abc1234+dirty",
	} {
		if got := debVersion(in); got != want {
			t.Errorf("debVersion(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestDebInstallRemove is the package as a user meets it: `make deb` builds
// it, dpkg -i installs it, the installed usltun reports the git describe
// version and ships its unit, completions, man page and example config,
// and dpkg -r then dpkg -P leave nothing behind. It installs into this
// machine's root file system, so it needs root and a machine without
// usltun installed by other means.
func TestDebInstallRemove(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("installs a package: needs root")
	}
	for _, tool := range []string{"dpkg", "make", "git"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed", tool)
		}
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", "usltun").CombinedOutput(); err == nil && strings.Contains(string(out), "installed") {
		t.Fatalf("a usltun package is already installed (%s): refusing to replace it", out)
	}
	if _, err := os.Stat("/usr/bin/usltun"); err == nil {
		t.Fatal("/usr/bin/usltun exists outside any package: refusing to overwrite it")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	describe := run("git", "describe", "--tags", "--always", "--dirty")
	out := run("make", "-s", "deb")
	lines := strings.Split(out, "\n")
	deb := filepath.Join(root, lines[len(lines)-1])
	if !strings.HasSuffix(deb, ".deb") {
		t.Fatalf("make deb printed %q, want the package's path last", out)
	}

	t.Cleanup(func() { exec.Command("dpkg", "-P", "usltun").Run() })
	run("dpkg", "-i", deb)
	installed := []string{"/usr/bin/usltun", "/lib/systemd/system/usltun@.service", "/usr/lib/systemd/user/usltun@.service", "/usr/share/bash-completion/completions/usltun",
		"/usr/share/zsh/vendor-completions/_usltun", "/usr/share/fish/vendor_completions.d/usltun.fish",
		"/usr/share/man/man1/usltun.1.gz", "/etc/usltun/example.toml"}
	for _, f := range installed {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("after dpkg -i: %v", err)
		}
	}
	if fi, err := os.Stat("/etc/usltun"); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("/etc/usltun: %v, mode %v; want 0700", err, fi.Mode().Perm())
	}
	if v := run("/usr/bin/usltun", "version"); !strings.HasPrefix(v, "usltun "+describe+" ") {
		t.Errorf("installed usltun version = %q, want git describe %q", v, describe)
	}
	if _, err := exec.LookPath("man"); err == nil {
		if page := run("man", "-P", "cat", "usltun"); !strings.Contains(page, "--max-streams") {
			t.Errorf("man usltun lacks --max-streams:\n%s", page)
		}
	} else if page := run("zcat", "/usr/share/man/man1/usltun.1.gz"); !strings.Contains(page, `\-\-max\-streams`) {
		t.Errorf("usltun.1 lacks --max-streams:\n%s", page)
	}

	run("dpkg", "-r", "usltun")
	for _, f := range installed[:6] {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("after dpkg -r: %s is still there", f)
		}
	}
	run("dpkg", "-P", "usltun")
	for _, f := range []string{"/etc/usltun/example.toml", "/etc/usltun"} {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("after dpkg -P: %s is still there", f)
		}
	}
	if out, err := exec.Command("dpkg-query", "-W", "usltun").CombinedOutput(); err == nil {
		t.Errorf("dpkg still knows usltun after purge: %s", out)
	}
}
