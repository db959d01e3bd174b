package policy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
)

// ParseTOML reads the rules of a config file's [[policy]] tables, in
// order:
//
//	[[policy]]
//	name = "interactive"
//	match = 'proto == "udp" || dst.port in [22, 3389, 5060]'
//	scheduler = "mirror"
//
// Other top-level keys are left to the rest of the config and ignored here;
// a key in a [[policy]] table other than name, match and scheduler, or one
// that is not a string, is an error (a typo would otherwise silently drop
// the field). filename prefixes errors and each Rule.Pos ("rules.toml:3",
// the line of the rule's [[policy]] header); a TOML syntax error carries the
// decoder's line. ParseTOML checks only the form; Engine.Set checks the
// rules.
func ParseTOML(data []byte, filename string) ([]Rule, error) {
	// Entries decode as maps, so that a wrong type or an unknown key is
	// reported against its own rule's line: the decoder's own type errors
	// name the line of the last [[policy]] with that key.
	var doc struct {
		Policy []map[string]any `toml:"policy"`
	}
	if _, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&doc); err != nil {
		return nil, tomlError(filename, err)
	}
	lines := policyHeaderLines(data)
	if len(lines) != len(doc.Policy) {
		lines = nil // written another way (an inline array): no lines to give
	}
	rules := make([]Rule, len(doc.Policy))
	for i, entry := range doc.Policy {
		r := &rules[i]
		r.Pos = filename
		if lines != nil {
			r.Pos = fmt.Sprintf("%s:%d", filename, lines[i])
		}
		for _, k := range slices.Sorted(maps.Keys(entry)) {
			var dst *string
			switch k {
			case "name":
				dst = &r.Name
			case "match":
				dst = &r.Match
			case "scheduler":
				dst = &r.Scheduler
			default:
				return nil, fmt.Errorf("%s: rule %d: unknown key %q; want name, match and scheduler", r.Pos, i+1, k)
			}
			s, ok := entry[k].(string)
			if !ok {
				return nil, fmt.Errorf("%s: rule %d: %s is a %T, want a string", r.Pos, i+1, k, entry[k])
			}
			*dst = s
		}
	}
	return rules, nil
}

// decoderLine is how the TOML decoder words a type error's place.
var decoderLine = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

// tomlError puts the decoder's line, where it gives one, into the
// file:line form.
func tomlError(filename string, err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s:%d: %s", filename, pe.Position.Line, pe.Message)
	}
	if m := decoderLine.FindStringSubmatch(err.Error()); m != nil {
		return fmt.Errorf("%s:%s: %s: %s", filename, m[1], m[2], m[3])
	}
	return fmt.Errorf("%s: %w", filename, err)
}

// policyHeader is a [[policy]] table header on a line of its own.
var policyHeader = regexp.MustCompile(`^\s*\[\[\s*policy\s*\]\]\s*(#.*)?$`)

// policyHeaderLines returns the line numbers of the [[policy]] headers. The
// decoder keeps no positions for keys that decoded well, so the rules'
// lines come from the text; ParseTOML uses them only when their count
// agrees with the decoder's (a header-like line inside a multi-line string
// would make it disagree).
func policyHeaderLines(data []byte) []int {
	var lines []int
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, len(data)+1)
	for n := 1; sc.Scan(); n++ {
		if policyHeader.MatchString(strings.TrimSuffix(sc.Text(), "\r")) {
			lines = append(lines, n)
		}
	}
	return lines
}
