package testenv

import "fmt"

// MultiLink is the lab of the multipath tests, A=B—C: a client host A
// joined to a gateway B by several links, and a host C behind B.
//
// A—B link i (0-based) is its own veth pair on its own subnets, A being .1
// and B .2 of 10.<i+1>.0.0/24 and fd00:<i+1>::/64; B—C is 10.100.0.0/24 and
// fd00:100::/64 with B .1 and C .2. A connection from A to B's address on
// link i uses link i (the subnet is connected there), so each link can be
// faulted, delayed and measured on its own. B forwards, C's default routes
// point at B, and A reaches C's subnet through the first link (for plain
// baselines; the multipath tests dial B on every link).
type MultiLink struct {
	A, B, C *Host
	AB      []*LinkPair // the A—B links, in order
	BC      *LinkPair
}

// maxMultiLinks keeps the link subnets (10.1–10.8) clear of B—C's 10.100.
const maxMultiLinks = 8

// NewMultiLink builds A=B—C with n links between A and B (1 ≤ n ≤ 8).
func NewMultiLink(t TB, n int) *MultiLink {
	t.Helper()
	if n < 1 || n > maxMultiLinks {
		t.Fatalf("testenv: multi-link lab with %d links: want 1..%d", n, maxMultiLinks)
	}
	m := &MultiLink{A: NewHost(t, "a"), B: NewHost(t, "b"), C: NewHost(t, "c")}
	for i := 1; i <= n; i++ {
		m.AB = append(m.AB, Link(t, m.A, m.B,
			fmt.Sprintf("10.%d.0.1/24,fd00:%d::1/64", i, i),
			fmt.Sprintf("10.%d.0.2/24,fd00:%d::2/64", i, i)))
	}
	m.BC = Link(t, m.B, m.C, "10.100.0.1/24,fd00:100::1/64", "10.100.0.2/24,fd00:100::2/64")
	m.B.EnableForwarding()
	m.C.AddRoute("default", "10.100.0.1")
	m.C.AddRoute("default", "fd00:100::1")
	m.A.AddRoute("10.100.0.0/24", "10.1.0.2")
	m.A.AddRoute("fd00:100::/64", "fd00:1::2")
	return m
}
