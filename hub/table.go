// Package hub is the peer table of a usltun daemon with many peers, and the
// runtime that serves it: one session per peer, flows routed to peers by
// longest-prefix match over their routes, each peer's streams served by a
// gateway with that peer's exports and budgets, flows between two peers
// spliced stream to stream, and a reload that changes the table without
// touching the peers it leaves alone.
//
// The contract, as WireGuard's AllowedIPs set it:
//
//   - A Peer is a public key, a unique name, the endpoints this side dials
//     (none: the peer dials in), its routes (the subnets behind it: flows to
//     them go to it), its exports (what it may reach through this host) and
//     its Limits.
//   - A Table is an immutable snapshot of the peers. Lookup is a walk of the
//     route trie (at most 32 or 128 nodes, no allocation): nothing is
//     O(peers) per flow or per packet. Two peers never route the same
//     prefix; the longest prefix wins between different ones.
//   - A Hub holds the current Table and a live state per peer. Reload swaps
//     the Table whole or not at all: added peers are admitted, removed peers'
//     flows are reset and their session closed, changed routes and exports
//     apply to new flows, and every other peer's session and flows stay as
//     they are.
package hub

import (
	"fmt"
	"net/netip"

	"github.com/usltun/usltun/route"
	"github.com/usltun/usltun/usl"
)

// Peer is one configured peer. A Peer is never changed once it is in a
// Table; a reload builds new ones.
type Peer struct {
	Name      string
	Key       usl.PublicKey
	Endpoints []usl.Endpoint // this side dials them, one path each; none: the peer dials in
	Routes    []netip.Prefix // subnets behind the peer: flows there go to it
	Exports   []netip.Prefix // what the peer may reach through this host (already narrowed)
	ExportDNS bool           // the peer may use this host's resolver
	Limits    Limits
}

// Table is an immutable set of peers with their route trie.
type Table struct {
	peers  []*Peer // configuration order
	byKey  map[usl.PublicKey]*Peer
	byName map[string]*Peer
	routes route.Table[*Peer]
}

// NewTable checks peers for duplicate keys, names and routes and builds
// the lookup structures. The peers are not copied; they must not change.
func NewTable(peers []*Peer) (*Table, error) {
	t := &Table{byKey: make(map[usl.PublicKey]*Peer, len(peers)), byName: make(map[string]*Peer, len(peers))}
	owner := make(map[netip.Prefix]*Peer)
	for _, p := range peers {
		if p.Name == "" {
			return nil, fmt.Errorf("peer %s has no name", p.Key)
		}
		if o := t.byKey[p.Key]; o != nil {
			return nil, fmt.Errorf("peers %q and %q have the same public_key %s: each peer needs its own key", o.Name, p.Name, p.Key)
		}
		if o := t.byName[p.Name]; o != nil {
			return nil, fmt.Errorf("two peers are named %q: names must be unique (status NAME and metrics use them)", p.Name)
		}
		for _, r := range p.Routes {
			r = r.Masked()
			if o := owner[r]; o != nil {
				return nil, fmt.Errorf("route %s is both %q's and %q's: a prefix goes to one peer", r, o.Name, p.Name)
			}
			owner[r] = p
			t.routes.Insert(r, p)
		}
		t.byKey[p.Key], t.byName[p.Name] = p, p
		t.peers = append(t.peers, p)
	}
	return t, nil
}

// Lookup returns the peer whose route is the longest prefix containing a.
func (t *Table) Lookup(a netip.Addr) (*Peer, bool) { return t.routes.Lookup(a) }

// Peer returns the peer with key k, or nil.
func (t *Table) Peer(k usl.PublicKey) *Peer { return t.byKey[k] }

// ByName returns the peer called name, or nil.
func (t *Table) ByName(name string) *Peer { return t.byName[name] }

// Peers are the peers in configuration order. The slice is the Table's:
// do not modify it.
func (t *Table) Peers() []*Peer { return t.peers }

// Len is the number of peers.
func (t *Table) Len() int { return len(t.peers) }
