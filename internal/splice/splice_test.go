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
	err = Copy(failWriter{}, readerOnly{bytes.NewReader([]byte("x"))}, &pool, nil)
	if !errors.Is(err, errDst) || !IsWrite(err) {
		t.Fatalf("destination error: %v", err)
	}
	err = Copy(failWriter{}, readerOnly{bytes.NewReader([]byte("x"))}, &pool, func() error { return nil })
	if !errors.Is(err, errDst) || !IsWrite(err) {
		t.Fatalf("destination error, waiting: %v", err)
	}
	// wait's EOF ends cleanly, its other errors are returned.
	if err := Copy(&dst, readerOnly{bytes.NewReader(nil)}, &pool, func() error { return io.EOF }); err != nil {
		t.Fatalf("wait EOF: %v", err)
	}
	if err := Copy(&dst, readerOnly{bytes.NewReader(nil)}, &pool, func() error { return errSrc }); !errors.Is(err, errSrc) {
		t.Fatalf("wait error: %v", err)
	}
}

// readerOnly hides a reader's WriteTo, so Copy reads it into its buffers.
type readerOnly struct{ io.Reader }

// writerToSource writes data, then fails with err; Read must not be used.
type writerToSource struct {
	data []byte
	err  error
}

func (s writerToSource) Read([]byte) (int, error) { panic("Copy read a WriterTo source") }
func (s writerToSource) WriteTo(w io.Writer) (int64, error) {
	n, err := w.Write(s.data)
	if err != nil {
		return int64(n), err
	}
	return int64(n), s.err
}

// TestCopyWriterTo: a source with WriteTo writes to dst itself, whatever
// wait says; the destination's errors are *WriteError, the source's are
// not, and its nil (EOF) ends cleanly.
func TestCopyWriterTo(t *testing.T) {
	var pool bufpool.Pool
	errSrc := errors.New("src broke")
	never := func() error { t.Fatal("Copy waited on a WriterTo source"); return nil }
	var dst bytes.Buffer
	if err := Copy(&dst, writerToSource{data: []byte("abc")}, &pool, never); err != nil || dst.String() != "abc" {
		t.Fatalf("clean end: %v, wrote %q", err, dst.String())
	}
	if err := Copy(&dst, writerToSource{data: []byte("d"), err: errSrc}, &pool, nil); !errors.Is(err, errSrc) || IsWrite(err) {
		t.Fatalf("source error: %v", err)
	}
	if err := Copy(failWriter{}, writerToSource{data: []byte("x")}, &pool, nil); !errors.Is(err, errDst) || !IsWrite(err) {
		t.Fatalf("destination error: %v", err)
	}
}
