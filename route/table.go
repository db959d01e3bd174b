// Package route is a longest-prefix-match routing table: prefixes of IPv4
// and IPv6 addresses mapped to values, looked up by address. It is a binary
// trie per family, one node per prefix bit, in the manner of wireguard-go's
// allowedips: a lookup walks at most 32 or 128 nodes and allocates nothing.
//
// A Table is not safe for concurrent mutation; concurrent Lookups with no
// Insert running are safe. IPv4-mapped IPv6 addresses are looked up as the
// IPv4 address they carry, and prefixes are masked before insertion.
package route

import "net/netip"

// Table maps prefixes to values of type T.
type Table[T any] struct {
	v4, v6 *node[T]
	n      int
}

type node[T any] struct {
	child [2]*node[T]
	val   T
	set   bool
}

// Insert maps p to v, replacing the value of an equal prefix.
func (t *Table[T]) Insert(p netip.Prefix, v T) {
	p = p.Masked()
	root := &t.v4
	if p.Addr().Is6() {
		root = &t.v6
	}
	if *root == nil {
		*root = &node[T]{}
	}
	n := *root
	a := p.Addr().AsSlice()
	for i := 0; i < p.Bits(); i++ {
		b := bit(a, i)
		if n.child[b] == nil {
			n.child[b] = &node[T]{}
		}
		n = n.child[b]
	}
	if !n.set {
		t.n++
	}
	n.val, n.set = v, true
}

// Lookup returns the value of the longest prefix that contains a.
func (t *Table[T]) Lookup(a netip.Addr) (v T, ok bool) {
	a = a.Unmap()
	n := t.v4
	if a.Is6() {
		n = t.v6
	}
	if !a.IsValid() {
		return v, false
	}
	b := a.AsSlice()
	for i := 0; n != nil; i++ {
		if n.set {
			v, ok = n.val, true
		}
		if i == len(b)*8 {
			break
		}
		n = n.child[bit(b, i)]
	}
	return v, ok
}

// Len is the number of prefixes in the table.
func (t *Table[T]) Len() int { return t.n }

func bit(a []byte, i int) int { return int(a[i/8]>>(7-i%8)) & 1 }
