package loadgen

import (
	"bytes"
	"testing"
)

// FuzzReadHeader: any bytes from the network give a header or an error,
// never a panic, and an accepted flow header stays within the bounds the
// server relies on.
func FuzzReadHeader(f *testing.F) {
	good := (&header{kind: kindFlow, mode: RR, dirs: Both, reqSize: 64, respSize: 64}).marshal()
	f.Add(good)
	f.Add((&header{kind: kindReport}).marshal())
	f.Add([]byte("ULG1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := readHeader(bytes.NewReader(b))
		if err != nil {
			return
		}
		if h.kind == kindFlow && h.mode == RR && (h.reqSize == 0 || h.reqSize > maxMsg || h.respSize == 0 || h.respSize > maxMsg) {
			t.Fatalf("accepted rr sizes %d/%d", h.reqSize, h.respSize)
		}
		if h2, err := readHeader(bytes.NewReader(h.marshal())); err != nil || h2 != h {
			t.Fatalf("header does not round-trip: %+v / %+v, %v", h, h2, err)
		}
	})
}
