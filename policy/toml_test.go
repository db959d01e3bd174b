package policy

import (
	"strings"
	"testing"
)

// issueTOML is the config form of issue 9, with other config around it.
const issueTOML = `# usltun config
listen = "0.0.0.0:7000"

[[policy]]
name = "interactive"
match = 'proto == "udp" || dst.port in [22, 3389, 5060]'
scheduler = "mirror"

[[policy]] # bulk transfers
name = "bulk"
match = 'dst.port == 873'
scheduler = "balance"
`

func TestParseTOMLIssueExample(t *testing.T) {
	rules, err := ParseTOML([]byte(issueTOML), "usltun.toml")
	if err != nil {
		t.Fatal(err)
	}
	want := []Rule{
		{Name: "interactive", Match: `proto == "udp" || dst.port in [22, 3389, 5060]`, Scheduler: "mirror", Pos: "usltun.toml:4"},
		{Name: "bulk", Match: `dst.port == 873`, Scheduler: "balance", Pos: "usltun.toml:9"},
	}
	if len(rules) != len(want) {
		t.Fatalf("got %d rules: %+v", len(rules), rules)
	}
	for i := range want {
		if rules[i] != want[i] {
			t.Errorf("rule %d: got %+v, want %+v", i+1, rules[i], want[i])
		}
	}
	e := newEngine(t)
	if err := e.Set(rules); err != nil {
		t.Fatal(err)
	}
	if d := e.Evaluate(dest(6, "10.0.0.2:873")); d.Class != "bulk" {
		t.Fatalf("decision %+v", d)
	}
}

func TestParseTOMLErrors(t *testing.T) {
	for _, c := range []struct {
		name, doc, want string
	}{
		{"syntax", "[[policy]]\nname = \"a\"\nmatch = 'true\nscheduler = \"mirror\"\n",
			"rules.toml:3: "},
		{"wrong type", "[[policy]]\nname = \"a\"\nmatch = 'true'\nscheduler = \"mirror\"\n\n[[policy]]\nname = \"b\"\nmatch = true\nscheduler = \"mirror\"\n",
			"rules.toml:6: rule 2: match is a bool, want a string"},
		{"unknown key", "[[policy]]\nname = \"a\"\nmatch = 'true'\nschedular = \"mirror\"\n",
			`rules.toml:1: rule 1: unknown key "schedular"; want name, match and scheduler`},
		{"not a table array", "x = 1\npolicy = 3\n",
			"rules.toml:2: policy: incompatible types"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseTOML([]byte(c.doc), "rules.toml")
			if err == nil || !strings.HasPrefix(err.Error(), c.want) || strings.Contains(err.Error(), "toml: ") {
				t.Fatalf("got %v, want an error starting %q", err, c.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error spans lines: %q", err)
			}
			t.Log(err)
		})
	}
}

// TestParseTOMLRuleLines: Set's errors point at the rule's line in the
// file, and at the place in its match.
func TestParseTOMLRuleLines(t *testing.T) {
	doc := "[[policy]]\nname = \"ok\"\nmatch = 'true'\nscheduler = \"mirror\"\n\n" +
		"[[policy]]\nname = \"typo\"\nmatch = 'dst.prt == 22'\nscheduler = \"mirror\"\n"
	rules, err := ParseTOML([]byte(doc), "rules.toml")
	if err != nil {
		t.Fatal(err)
	}
	err = newEngine(t).Set(rules)
	want := `rules.toml:6: rule 2 "typo": match:1:4: undeclared reference to 'dst.prt' (did you mean 'dst.port'?)`
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}

	// Written as an inline array there are no header lines: the file name
	// alone.
	rules, err = ParseTOML([]byte(`policy = [{name = "a", match = "1", scheduler = "mirror"}]`), "inline.toml")
	if err != nil {
		t.Fatal(err)
	}
	if err := newEngine(t).Set(rules); err == nil || !strings.HasPrefix(err.Error(), `inline.toml: rule 1 "a": match: is of type int`) {
		t.Fatalf("inline: %v", err)
	}

	// A header-looking line inside a multi-line string must not shift the
	// lines (the counts disagree, so no lines are given).
	doc = "[[policy]]\nname = \"a\"\nmatch = '''\ntrue ||\n[[policy]]\n'''\nscheduler = \"mirror\"\n"
	rules, err = ParseTOML([]byte(doc), "odd.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 1 || rules[0].Pos != "odd.toml" {
		t.Fatalf("rules %+v", rules)
	}
}
