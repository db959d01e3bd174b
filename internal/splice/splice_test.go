package splice

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand"
	"testing"
	"testing/iotest"

	"github.com/usltun/usltun/internal/bufpool"
)

// chunky returns its data in reads of varying sizes, some filling the idle
// buffer, so Copy switches between its buffers.
type chunky struct {
	data []byte
	rng  *rand.Rand
}

func (c *chunky) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(c.data), 1+c.rng.Intn(3*idleBuf))
	if c.rng.Intn(4) == 0 {
		n = min(len(p), len(c.data))
	}
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func TestCopyAllBytes(t *testing.T) {
	data := make([]byte, 5<<20)
	rand.New(rand.NewSource(1)).Read(data)
	for _, waiting := range []bool{false, true} {
		var pool bufpool.Pool
		var dst bytes.Buffer
		var wait func() error
		if waiting {
			wait = func() error { return nil }
		}
		err := Copy(&dst, &chunky{data: data, rng: rand.New(rand.NewSource(2))}, &pool, wait)
		if err != nil || sha256.Sum256(dst.Bytes()) != sha256.Sum256(data) {
			t.Fatalf("wait %v: err %v, %d of %d bytes, or different", waiting, err, dst.Len(), len(data))
		}
	}
}

type failWriter struct{}

var errDst = errors.New("dst broke")

func (failWriter) Write([]byte) (int, error) { return 0, errDst }

func TestCopyErrors(t *testing.T) {
	var pool bufpool.Pool
	errSrc := errors.New("src broke")
	// Data read together with an error is written first.
	var dst bytes.Buffer
	err := Copy(&dst, iotest.DataErrReader(io.MultiReader(bytes.NewReader([]byte("abc")), iotest.ErrReader(errSrc))), &pool, nil)
	if !errors.Is(err, errSrc) || IsWrite(err) || dst.String() != "abc" {
		t.Fatalf("source error: %v, wrote %q", err, dst.String())
	}
	err = Copy(failWriter{}, bytes.NewReader([]byte("x")), &pool, nil)
	if !errors.Is(err, errDst) || !IsWrite(err) {
		t.Fatalf("destination error: %v", err)
	}
	err = Copy(failWriter{}, bytes.NewReader([]byte("x")), &pool, func() error { return nil })
	if !errors.Is(err, errDst) || !IsWrite(err) {
		t.Fatalf("destination error, waiting: %v", err)
	}
	// wait's EOF ends cleanly, its other errors are returned.
	if err := Copy(&dst, bytes.NewReader(nil), &pool, func() error { return io.EOF }); err != nil {
		t.Fatalf("wait EOF: %v", err)
	}
	if err := Copy(&dst, bytes.NewReader(nil), &pool, func() error { return errSrc }); !errors.Is(err, errSrc) {
		t.Fatalf("wait error: %v", err)
	}
}
