package usl

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// prefixLimiter is the listener's per-source connection rate limit: a
// token bucket per source prefix, /32 for IPv4 and /64 for IPv6 (one
// IPv6 host usually owns a whole /64, so a smaller key would give it
// 2^64 buckets). The table has a fixed size and evicts the source seen
// least recently when full: a new source is never refused because the
// table is full. A flood from more prefixes than the table holds thus
// gets fresh buckets as it cycles through; the pending-connection pool
// and mac1 are what bound it then.
type prefixLimiter struct {
	rate, burst float64
	size        int

	mu         sync.Mutex
	m          map[netip.Prefix]*bucket
	head, tail *bucket // most and least recently used
}

type bucket struct {
	key        netip.Prefix
	tokens     float64
	last       time.Time
	prev, next *bucket
}

func newPrefixLimiter(rate float64, burst, size int) *prefixLimiter {
	return &prefixLimiter{rate: rate, burst: float64(burst), size: size, m: make(map[netip.Prefix]*bucket, size)}
}

// sourcePrefix is the rate-limit key of a remote address; ok is false for
// non-IP transports, which are not limited.
func sourcePrefix(a net.Addr) (netip.Prefix, bool) {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Prefix{}, false
	}
	ip := ap.Addr().Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, err := ip.Prefix(bits)
	return p, err == nil
}

// allow takes a token from key's bucket.
func (pl *prefixLimiter) allow(key netip.Prefix, now time.Time) bool {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	b := pl.m[key]
	if b == nil {
		if len(pl.m) >= pl.size {
			old := pl.tail
			pl.unlink(old)
			delete(pl.m, old.key)
		}
		b = &bucket{key: key, tokens: pl.burst, last: now}
		pl.m[key] = b
	} else {
		pl.unlink(b)
		b.tokens = min(pl.burst, b.tokens+now.Sub(b.last).Seconds()*pl.rate)
		b.last = now
	}
	pl.pushFront(b)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (pl *prefixLimiter) unlink(b *bucket) {
	if b.prev != nil {
		b.prev.next = b.next
	} else {
		pl.head = b.next
	}
	if b.next != nil {
		b.next.prev = b.prev
	} else {
		pl.tail = b.prev
	}
	b.prev, b.next = nil, nil
}

func (pl *prefixLimiter) pushFront(b *bucket) {
	b.next = pl.head
	if pl.head != nil {
		pl.head.prev = b
	}
	pl.head = b
	if pl.tail == nil {
		pl.tail = b
	}
}
