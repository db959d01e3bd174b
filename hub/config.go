package hub

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/usltun/usltun/usl"
)

// The configuration file's peer part (the rest of the file is the daemon's
// flags, which the command line reads):
//
//	export = ["10.20.0.0/16"]          # what peers may reach, unless a peer narrows it
//
//	[[peer]]
//	name = "anna-laptop"
//	public_key = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
//	export = ["10.20.5.0/24"]          # this peer may reach only this
//	route = ["10.30.1.0/24"]           # subnets behind this peer
//	endpoint = ["198.51.100.7:7400"]   # optional: this side dials it
//	max_flows = 100                    # and every other Limits field
//
// Keys may be written with '_' or '-', as the flags' are.

// ParseOptions are what the file's peers inherit and how the daemon reads
// the values it has its own syntax for.
type ParseOptions struct {
	// Export is the global export when the file sets none (the command
	// line's --export).
	Export    []netip.Prefix
	ExportDNS bool
	// Defaults are the limits of peers that do not set their own.
	Defaults Limits
	// Self is this host's key: no peer may have it.
	Self usl.PublicKey
	// Endpoint parses one endpoint (HOST[:PORT][@IFACE]).
	Endpoint func(string) (usl.Endpoint, error)
	// Size parses a byte size (32MiB).
	Size func(string) (int, error)
}

// File is a parsed configuration: the global export and the peer table.
type File struct {
	Export []netip.Prefix
	Table  *Table
}

// peerKeys are the keys a [[peer]] section may have.
var peerKeys = []string{"name", "public_key", "endpoint", "route", "export", "export_dns", "max_flows", "max_streams", "replay_buffer", "max_dials", "max_opens"}

// Parse reads the peer part of a TOML configuration. A syntax error names
// its line; any other error names the peer. The whole file is checked
// before anything is returned: a bad file never yields a partial table.
func Parse(data []byte, opt ParseOptions) (*File, error) {
	var doc map[string]any
	if _, err := toml.Decode(string(data), &doc); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("line %d: %s", pe.Position.Line, pe.Message)
		}
		return nil, err
	}
	f := &File{Export: opt.Export}
	if v, ok := doc["export"]; ok {
		ps, err := prefixList(v)
		if err != nil {
			return nil, fmt.Errorf("export: %w", err)
		}
		f.Export = ps
	}
	exportDNS := opt.ExportDNS
	if v, ok := lookup(doc, "export_dns"); ok {
		b, ok := v.(bool)
		if !ok {
			return nil, errors.New("export_dns: want true or false")
		}
		exportDNS = b
	}
	raw, ok := doc["peer"]
	if !ok {
		return nil, errors.New("no [[peer]] sections")
	}
	sections, ok := raw.([]map[string]any)
	if !ok {
		return nil, errors.New("peer: write each peer as a [[peer]] section")
	}
	var peers []*Peer
	for i, sec := range sections {
		p, err := parsePeer(sec, f.Export, exportDNS, opt)
		if err != nil {
			label := fmt.Sprintf("[[peer]] #%d", i+1)
			if n, ok := sec["name"].(string); ok && n != "" {
				label += fmt.Sprintf(" (%s)", n)
			}
			return nil, fmt.Errorf("%s: %w", label, err)
		}
		peers = append(peers, p)
	}
	t, err := NewTable(peers)
	if err != nil {
		return nil, err
	}
	f.Table = t
	return f, nil
}

// lookup finds key written with '_' or '-'.
func lookup(m map[string]any, key string) (any, bool) {
	if v, ok := m[key]; ok {
		return v, true
	}
	v, ok := m[strings.ReplaceAll(key, "_", "-")]
	return v, ok
}

func parsePeer(sec map[string]any, global []netip.Prefix, exportDNS bool, opt ParseOptions) (*Peer, error) {
	for k := range sec {
		if !slices.Contains(peerKeys, strings.ReplaceAll(k, "-", "_")) {
			return nil, fmt.Errorf("unknown key %q (a peer has %s)", k, strings.Join(peerKeys, ", "))
		}
	}
	p := &Peer{ExportDNS: exportDNS}
	str := func(key string) (string, error) {
		v, ok := lookup(sec, key)
		if !ok {
			return "", nil
		}
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("%s: want a string", key)
		}
		return s, nil
	}
	keyText, err := str("public_key")
	if err != nil {
		return nil, err
	}
	if keyText == "" {
		return nil, errors.New("public_key is missing (run 'usltun pubkey < peer.key' on the peer)")
	}
	if p.Key, err = usl.ParsePublicKey(keyText); err != nil {
		return nil, fmt.Errorf("public_key: %w", err)
	}
	if p.Key == opt.Self {
		return nil, errors.New("public_key is this host's own key: give the peer's")
	}
	if p.Name, err = str("name"); err != nil {
		return nil, err
	}
	if p.Name == "" {
		p.Name = p.Key.String()[:8]
	}
	if strings.ContainsAny(p.Name, " \t\n\"") {
		return nil, fmt.Errorf("name %q: use letters, digits, '-', '_' or '.'", p.Name)
	}
	if v, ok := lookup(sec, "endpoint"); ok {
		list, err := stringList(v)
		if err != nil {
			return nil, fmt.Errorf("endpoint: %w", err)
		}
		if len(list) > usl.DefaultMaxPathsPerSession {
			return nil, fmt.Errorf("endpoint: %d endpoints; a session has at most %d paths", len(list), usl.DefaultMaxPathsPerSession)
		}
		for _, s := range list {
			ep, err := opt.Endpoint(s)
			if err != nil {
				return nil, fmt.Errorf("endpoint: %w", err)
			}
			p.Endpoints = append(p.Endpoints, ep)
		}
	}
	if v, ok := lookup(sec, "route"); ok {
		if p.Routes, err = prefixList(v); err != nil {
			return nil, fmt.Errorf("route: %w", err)
		}
	}
	p.Exports = global
	if v, ok := lookup(sec, "export"); ok {
		own, err := prefixList(v)
		if err != nil {
			return nil, fmt.Errorf("export: %w", err)
		}
		if err := narrows(own, global); err != nil {
			return nil, err
		}
		p.Exports = own
	}
	for _, e := range p.Exports {
		for _, r := range p.Routes {
			if e.Overlaps(r) {
				return nil, fmt.Errorf("export %s overlaps the peer's own route %s: its flows there would come back to it, a loop; make them disjoint", e, r)
			}
		}
	}
	if v, ok := lookup(sec, "export_dns"); ok {
		b, ok := v.(bool)
		if !ok {
			return nil, errors.New("export_dns: want true or false")
		}
		p.ExportDNS = b
	}
	var lim Limits
	for _, f := range []struct {
		key string
		dst *int
	}{{"max_flows", &lim.MaxFlows}, {"max_streams", &lim.MaxStreams}, {"max_dials", &lim.MaxDials}, {"max_opens", &lim.MaxOpens}} {
		v, ok := lookup(sec, f.key)
		if !ok {
			continue
		}
		n, ok := v.(int64)
		if !ok || n < 1 || n > 1<<24 {
			return nil, fmt.Errorf("%s: want a whole number from 1 to %d", f.key, 1<<24)
		}
		*f.dst = int(n)
	}
	if v, ok := lookup(sec, "replay_buffer"); ok {
		var n int
		switch v := v.(type) {
		case int64:
			n = int(v)
		case string:
			if n, err = opt.Size(v); err != nil {
				return nil, fmt.Errorf("replay_buffer: %w", err)
			}
		default:
			return nil, errors.New("replay_buffer: want a size like \"32MiB\"")
		}
		if n < 1<<20 {
			return nil, fmt.Errorf("replay_buffer %d is too small: use at least 1MiB", n)
		}
		lim.ReplayBuffer = n
	}
	p.Limits = lim.WithDefaults(opt.Defaults)
	return p, nil
}

// narrows checks that every prefix of own lies inside the global export:
// a peer's export narrows what the host exports, it never widens it. With
// no global export a peer's own list stands alone.
func narrows(own, global []netip.Prefix) error {
	if len(global) == 0 {
		return nil
	}
	for _, o := range own {
		ok := false
		for _, g := range global {
			if g.Bits() <= o.Bits() && g.Contains(o.Addr()) {
				ok = true
				break
			}
		}
		if !ok {
			return fmt.Errorf("export %s is not inside the global export %v: a peer's export may only narrow it", o, global)
		}
	}
	return nil
}

func stringList(v any) ([]string, error) {
	if s, ok := v.(string); ok {
		return []string{s}, nil
	}
	list, ok := v.([]any)
	if !ok {
		return nil, errors.New("want a list of strings")
	}
	out := make([]string, 0, len(list))
	for _, e := range list {
		s, ok := e.(string)
		if !ok {
			return nil, errors.New("want a list of strings")
		}
		out = append(out, s)
	}
	return out, nil
}

func prefixList(v any) ([]netip.Prefix, error) {
	list, err := stringList(v)
	if err != nil {
		return nil, err
	}
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not a prefix: write it like 10.20.0.0/16", s)
		}
		if p != p.Masked() {
			return nil, fmt.Errorf("prefix %s has host bits set: did you mean %s?", p, p.Masked())
		}
		out = append(out, p)
	}
	return out, nil
}
