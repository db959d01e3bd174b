package main

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/BurntSushi/toml"
	"github.com/usltun/usltun/hub"
	"github.com/usltun/usltun/usl"
)

// A daemon's peers come one of two ways. The simple case is the command
// line: --peer-key (repeatable) with --peer or --listen, --route and
// --export for all of them. A hub writes [[peer]] sections in its --config
// file instead, each with its own routes, exports, endpoints and limits
// (package hub); only that file is re-read by `usltun reload` and SIGHUP.

// hasPeerSections reports whether a config file has [[peer]] sections. A
// file that does not parse has none; the flags' own reading reports it.
func hasPeerSections(b []byte) bool {
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '{' {
		return false // JSON: the flags only
	}
	var doc map[string]any
	if _, err := toml.Decode(string(b), &doc); err != nil {
		return false
	}
	_, ok := doc["peer"].([]map[string]any)
	return ok
}

// checkPeers is AfterApply's part about the peers.
func (c *upCmd) checkPeers() error {
	if c.Config != "" {
		b, err := os.ReadFile(string(c.Config))
		if err != nil {
			return fmt.Errorf("--config: %w", err)
		}
		c.hubMode = hasPeerSections(b)
	}
	if c.hubMode {
		switch {
		case len(c.PeerKey) > 0:
			return fmt.Errorf("--peer-key and [[peer]] sections in %s: give the peers one way, as sections (public_key = ...)", c.Config)
		case len(c.Peer) > 0:
			return fmt.Errorf("--peer and [[peer]] sections in %s: give each peer's endpoint = [...] in its section", c.Config)
		}
		f, err := c.readHubFile(usl.PublicKey{})
		if err != nil {
			return err
		}
		dialsAll := true
		for _, p := range f.Table.Peers() {
			dialsAll = dialsAll && len(p.Endpoints) > 0
		}
		if len(c.Listen) == 0 && !dialsAll {
			return errors.New("peers without an endpoint dial in: give listen = [\"ADDR:PORT\"] in the config (or --listen)")
		}
		return nil
	}
	if len(c.PeerKey) == 0 {
		return errors.New("missing --peer-key BASE64 (the peer's public key: run 'usltun pubkey < peer.key' on the peer), or [[peer]] sections in --config")
	}
	for _, k := range c.PeerKey {
		if _, err := usl.ParsePublicKey(k); err != nil {
			return fmt.Errorf("--peer-key: %w (run 'usltun pubkey < peer.key' on the peer)", err)
		}
	}
	if len(c.PeerKey) > 1 {
		switch {
		case len(c.Peer) > 0:
			return errors.New("--peer dials one peer: with several --peer-key, write [[peer]] sections with endpoint = [...] in --config")
		case len(c.Route) > 0:
			return errors.New("--route with several --peer-key: say which peer routes what with [[peer]] sections (route = [...]) in --config")
		case len(c.Listen) == 0:
			return errors.New("several --peer-key: give --listen ADDR[:PORT] for them to dial")
		}
		return nil
	}
	if (len(c.Peer) == 0) == (len(c.Listen) == 0) {
		return errors.New("give exactly one of --peer HOST[:PORT] (dial the peer; repeatable, one path each) or --listen ADDR[:PORT] (wait for it; repeatable)")
	}
	return nil
}

// parseOptions is how a hub file's peers inherit the command line.
func (c *upCmd) parseOptions(self usl.PublicKey) hub.ParseOptions {
	return hub.ParseOptions{
		Export:    c.Export,
		ExportDNS: c.ExportDNS,
		Self:      self,
		Defaults:  hub.Limits{MaxStreams: c.MaxStreams, ReplayBuffer: int(c.ReplayBuffer)},
		Endpoint:  parsePeer,
		Size: func(s string) (int, error) {
			var b byteSize
			err := b.UnmarshalText([]byte(s))
			return int(b), err
		},
	}
}

// readHubFile reads and checks the [[peer]] sections of --config.
func (c *upCmd) readHubFile(self usl.PublicKey) (*hub.File, error) {
	b, err := os.ReadFile(string(c.Config))
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	f, err := hub.Parse(b, c.parseOptions(self))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.Config, err)
	}
	return f, nil
}

// peerTable is the daemon's peer table at start. The command line's peer
// routes every destination the device or a proxy hands it (0.0.0.0/0 and
// ::/0); the kernel routes only --route to the device.
func (c *upCmd) peerTable(self usl.PublicKey) (*hub.Table, error) {
	if c.hubMode {
		f, err := c.readHubFile(self)
		if err != nil {
			return nil, err
		}
		return f.Table, nil
	}
	// The command line's peers have the session limits of the flags and,
	// as before there were hubs, no per-peer flow, dial or open-rate bound.
	lim := hub.Limits{MaxStreams: c.MaxStreams, ReplayBuffer: int(c.ReplayBuffer)}.WithDefaults(hub.Limits{})
	lim.MaxFlows, lim.MaxDials, lim.MaxOpens = 0, 0, 0
	var peers []*hub.Peer
	for i, k := range c.PeerKey {
		key, err := usl.ParsePublicKey(k) // checkPeers checked it
		if err != nil {
			return nil, fmt.Errorf("--peer-key: %w", err)
		}
		if key == self {
			return nil, errors.New("--peer-key is this host's own public key: pass the other host's key (usltun pubkey < peer.key)")
		}
		p := &hub.Peer{Name: c.PeerName, Key: key, Exports: c.Export, ExportDNS: c.ExportDNS, Limits: lim}
		if len(c.PeerKey) > 1 || p.Name == "" {
			p.Name = fmt.Sprintf("peer%d", i+1)
		}
		if len(c.PeerKey) == 1 {
			p.Endpoints = c.endpoints()
			p.Routes = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
		}
		peers = append(peers, p)
	}
	return hub.NewTable(peers)
}

// tunRoutes are the prefixes the kernel sends into the device: --route and,
// for a hub, every peer's routes.
func (c *upCmd) tunRoutes(t *hub.Table) []netip.Prefix {
	out := append([]netip.Prefix{}, c.Route...)
	if !c.hubMode {
		return out
	}
	for _, p := range t.Peers() {
	next:
		for _, r := range p.Routes {
			for _, o := range out {
				if o.Bits() <= r.Bits() && o.Contains(r.Addr()) {
					continue next // already covered
				}
			}
			out = append(out, r)
		}
	}
	return out
}
