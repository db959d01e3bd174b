package hub

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/usltun/usltun/usl"
)

func testKey(t testing.TB) usl.PublicKey {
	t.Helper()
	k, err := usl.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

func testOptions() ParseOptions {
	return ParseOptions{
		Endpoint: func(s string) (usl.Endpoint, error) { return usl.Endpoint{Addr: s}, nil },
		Size:     func(s string) (int, error) { return strconv.Atoi(strings.TrimSuffix(s, "B")) },
	}
}

func TestParseIssueExample(t *testing.T) {
	a, b := testKey(t), testKey(t)
	doc := `key = "/etc/usltun/hub.key"
listen = ["0.0.0.0:7400"]
export = ["10.20.0.0/16"]          # what peers may reach

[[peer]]
name = "anna-laptop"
public_key = "` + a.String() + `"
export = ["10.20.5.0/24"]
route = ["10.30.1.0/24"]

[[peer]]
name = "sensor-17"
public_key = "` + b.String() + `"
endpoint = ["198.51.100.7:7400"]
max-flows = 7
max_opens = 40
replay_buffer = "2097152B"
`
	f, err := Parse([]byte(doc), testOptions())
	if err != nil {
		t.Fatal(err)
	}
	anna, sensor := f.Table.ByName("anna-laptop"), f.Table.ByName("sensor-17")
	if anna == nil || sensor == nil || f.Table.Len() != 2 {
		t.Fatalf("peers: %v", f.Table.Peers())
	}
	if anna.Key != a || len(anna.Exports) != 1 || anna.Exports[0].String() != "10.20.5.0/24" {
		t.Errorf("anna: key %v exports %v", anna.Key, anna.Exports)
	}
	if len(sensor.Exports) != 1 || sensor.Exports[0].String() != "10.20.0.0/16" {
		t.Errorf("sensor inherits the global export: %v", sensor.Exports)
	}
	if len(sensor.Endpoints) != 1 || sensor.Endpoints[0].Addr != "198.51.100.7:7400" {
		t.Errorf("sensor endpoints %v", sensor.Endpoints)
	}
	if sensor.Limits.MaxFlows != 7 || sensor.Limits.ReplayBuffer != 2<<20 || sensor.Limits.MaxDials != DefaultMaxDials || sensor.Limits.MaxOpens != 40 {
		t.Errorf("sensor limits %+v", sensor.Limits)
	}
	if anna.Limits != (Limits{}).WithDefaults(Limits{}) {
		t.Errorf("anna limits %+v, want the defaults", anna.Limits)
	}
	if p, ok := f.Table.Lookup(netip.MustParseAddr("10.30.1.9")); !ok || p != anna {
		t.Errorf("10.30.1.9 routes to %v", p)
	}
	if _, ok := f.Table.Lookup(netip.MustParseAddr("10.30.2.9")); ok {
		t.Error("10.30.2.9 is no peer's route")
	}
}

func TestParseErrors(t *testing.T) {
	a, b := testKey(t), testKey(t)
	peer := func(name string, k usl.PublicKey, extra string) string {
		return "[[peer]]\nname = \"" + name + "\"\npublic_key = \"" + k.String() + "\"\n" + extra + "\n"
	}
	for _, c := range []struct{ doc, want string }{
		{"export = [\"10.0.0.0/8\"]\n\n[[peer]]\nname = \"x\n", "line 4"},
		{peer("a", a, "route = [\"10.1.0.0/16\"]") + peer("b", b, "route = [\"10.1.0.0/16\"]"), `route 10.1.0.0/16 is both "a"'s and "b"'s`},
		{peer("a", a, "") + peer("b", a, ""), "same public_key"},
		{peer("a", a, "") + peer("a", b, ""), `two peers are named "a"`},
		{"export = [\"10.20.0.0/16\"]\n" + peer("a", a, "export = [\"10.21.0.0/24\"]"), "may only narrow"},
		{peer("a", a, "colour = 1"), `[[peer]] #1 (a): unknown key "colour"`},
		{peer("a", a, "route = [\"10.1.2.3/16\"]"), "host bits set"},
		{peer("a", a, "max_flows = 0"), "max_flows: want a whole number"},
		{"[[peer]]\nname = \"n\"\n", "public_key is missing"},
		{peer("a", a, "export = [\"10.0.0.0/8\"]\nroute = [\"10.9.0.0/16\"]"), "overlaps the peer's own route"},
		{"listen = [\"0.0.0.0:7400\"]\n", "no [[peer]] sections"},
	} {
		_, err := Parse([]byte(c.doc), testOptions())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want %q", c.doc, err, c.want)
		}
	}
}
