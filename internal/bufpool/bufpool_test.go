package bufpool

import "testing"

func TestClasses(t *testing.T) {
	var p Pool
	for n, wantCap := range map[int]int{0: 64, 1: 64, 64: 64, 65: 128, 512: 512, 513: 1024, 64 << 10: 64 << 10, 64<<10 + 1: 128 << 10, 2 << 20: 2 << 20} {
		b := p.Get(n)
		if len(*b) != n || cap(*b) != wantCap {
			t.Errorf("Get(%d): len %d cap %d, want cap %d", n, len(*b), cap(*b), wantCap)
		}
		p.Put(b)
	}
}

func TestReuseAndForeign(t *testing.T) {
	var p Pool
	b := p.Get(1000)
	(*b)[0] = 42
	p.Put(b)
	// A foreign slice is ignored rather than poisoning a class.
	odd := make([]byte, 1000)
	p.Put(&odd)
	huge := make([]byte, 4<<20)
	p.Put(&huge)
	if c := p.Get(1000); cap(*c) != 1024 {
		t.Fatalf("cap %d after foreign Puts", cap(*c))
	}
}

func BenchmarkGetPut(b *testing.B) {
	var p Pool
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		p.Put(p.Get(64 << 10))
	}
}
