package policy

import (
	"bytes"
	"strconv"
	"strings"
	"testing"

	"github.com/usltun/usltun/flow"
)

// FuzzParseTOML: any file either fails to parse with one line of error, or
// gives rules whose positions point at [[policy]] header lines; Set and
// Evaluate never panic on them. (CEL's own parser is not ours to fuzz; this
// is the header scan and the key checks around the TOML decoder.)
func FuzzParseTOML(f *testing.F) {
	f.Add([]byte(issueTOML))
	f.Add([]byte("[[policy]]\nname = \"a\"\nmatch = 'in_prefix(dst.addr, \"10.0.0.0/8\")'\nscheduler = \"mirror\"\n"))
	f.Add([]byte("[[policy]]\nmatch = '''\n[[policy]]\n'''\n"))
	f.Add([]byte(`policy = [{name = "a", match = "1", scheduler = "x"}]`))
	f.Add([]byte("[[policy]]\r\nname = 1\r\n"))
	e := newEngine(f)
	d := flow.Named(flow.TCP, "host.example", 22)
	f.Fuzz(func(t *testing.T, data []byte) {
		rules, err := ParseTOML(data, "f.toml")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f.toml") {
				t.Fatalf("error without the file name: %v", err)
			}
			return
		}
		lines := bytes.Split(data, []byte("\n"))
		for _, r := range rules {
			n, ok := strings.CutPrefix(r.Pos, "f.toml:")
			if !ok {
				if r.Pos != "f.toml" {
					t.Fatalf("position %q", r.Pos)
				}
				continue
			}
			i, err := strconv.Atoi(n)
			if err != nil || i < 1 || i > len(lines) || !policyHeader.Match(bytes.TrimSuffix(lines[i-1], []byte("\r"))) {
				t.Fatalf("position %q is not a [[policy]] header line", r.Pos)
			}
		}
		if e.Set(rules) == nil {
			e.Evaluate(d)
		}
	})
}
