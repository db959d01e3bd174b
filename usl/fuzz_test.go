package usl

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// fixedKey makes a deterministic key for fuzzing, so that checked-in seeds
// stay valid handshakes for it.
func fixedKey(b byte) PrivateKey {
	var k PrivateKey
	for i := range k {
		k[i] = b + byte(i)
	}
	k.clamp()
	return k
}

// FuzzFrames feeds arbitrary decrypted stream bytes through the frame
// decoder and into a session's frame handler: whatever a peer sends, the
// session must not panic, and every header that parses must re-encode to
// the same bytes.
func FuzzFrames(f *testing.F) {
	f.Add(frameSeed())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		cfg, err := Config{PrivateKey: fixedKey(1), PeerKeys: []PublicKey{fixedKey(2).Public()},
			MaxFrame: 4096, MaxStreams: 8, StreamWindow: 8192}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		// Odd-length inputs play the dialer, so both stream-id parities
		// and both roles meet the input.
		dialer := len(in)%2 == 1
		s := newSession(cfg, dialer, cfg.PeerKeys[0], sessionID{1})
		p := newPath(s, newLiveConn(fuzzConn{bytes.NewReader(nil)}))
		s.paths = []*path{p}
		// A stream this side opened, so that ACCEPT, WINDOW and RESET
		// for our own ids reach a waiting opener.
		s.mu.Lock()
		mine := newStream(s, s.nextStream, nil)
		mine.opener = true
		s.streams[mine.id] = mine
		s.pushLocked(frameOpen, mine.id, 0)
		s.nextStream += 2
		s.mu.Unlock()
		r := bytes.NewReader(in)
		var hb [headerLen]byte
		for {
			if _, err := io.ReadFull(r, hb[:]); err != nil {
				break
			}
			h, err := parseHeader(hb[:], cfg.MaxFrame)
			if err != nil {
				break
			}
			var re [headerLen]byte
			h.put(re[:])
			if re != hb {
				t.Fatalf("header %+v re-encodes to %x, was %x", h, re, hb)
			}
			payload := make([]byte, h.length)
			if _, err := io.ReadFull(r, payload); err != nil {
				break
			}
			var data *[]byte
			if h.typ == frameData {
				data = s.pool.get(len(payload))
				copy(*data, payload)
			}
			if err := s.handleFrame(p, h, payload, data); err != nil {
				break
			}
		}
		s.end(ErrSessionClosed, Closed)
	})
}

// frameSeed is a plausible stream: OPEN, DATA, WINDOW, FIN, PING, RESET.
func frameSeed() []byte {
	var b []byte
	add := func(h frameHeader, payload []byte) {
		h.length = uint32(len(payload))
		var hb [headerLen]byte
		h.put(hb[:])
		b = append(append(b, hb[:]...), payload...)
	}
	u64 := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	add(frameHeader{typ: frameOpen, stream: 1, seq: 1}, []byte{1, 6, 10, 0, 0, 1, 0, 80})
	add(frameHeader{typ: frameData, stream: 1, seq: 2}, []byte("hello"))
	add(frameHeader{typ: frameWindow, stream: 1, seq: 3}, u64(1<<20))
	add(frameHeader{typ: frameFin, stream: 1, seq: 4}, nil)
	add(frameHeader{typ: framePing}, u64(12345))
	add(frameHeader{typ: frameAck, ack: 0}, nil)
	add(frameHeader{typ: frameReset, stream: 1, seq: 5}, []byte{byte(ResetRefused)})
	add(frameHeader{typ: frameClose, seq: 6}, nil)
	return b
}

// fuzzConn is a net.Conn whose reads come from a buffer and whose writes
// vanish.
type fuzzConn struct{ r *bytes.Reader }

func (c fuzzConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c fuzzConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c fuzzConn) Close() error                     { return nil }
func (c fuzzConn) LocalAddr() net.Addr              { return memAddr("fuzz") }
func (c fuzzConn) RemoteAddr() net.Addr             { return memAddr("fuzz") }
func (c fuzzConn) SetDeadline(time.Time) error      { return nil }
func (c fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c fuzzConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzHandshake feeds arbitrary bytes to both handshake parsers: as the
// initiator's first flight to a responder, and as a responder's answer to
// an initiator. Neither may panic; a responder accepting garbage as an
// authenticated hello would be a failure of Noise itself.
func FuzzHandshake(f *testing.F) {
	f.Add(byte(0), handshakeSeed())
	f.Add(byte(1), []byte("USL\x01\x00\x00"))
	f.Add(byte(0), []byte("USL\x03"))
	f.Fuzz(func(t *testing.T, mode byte, in []byte) {
		server, client := fixedKey(1), fixedKey(2)
		if mode%2 == 0 {
			sh, err := readClientHello(fuzzConn{bytes.NewReader(in)}, server)
			if err == nil && (sh.hello.epoch == 0 || sh.hello.id == sessionID{}) {
				t.Fatalf("accepted an invalid hello %+v", sh.hello)
			}
			return
		}
		clientHandshake(fuzzConn{bytes.NewReader(in)}, client, server.Public(),
			hello{id: sessionID{1}, epoch: 1, window: 1, maxFrame: 1})
		parseHello(in)
		parseReply(in)
	})
}

// handshakeSeed is a valid first flight from fixedKey(2) to fixedKey(1).
// Noise draws a fresh ephemeral key, so it is built once per process.
var handshakeSeed = func() func() []byte {
	var seed []byte
	return func() []byte {
		if seed == nil {
			hs, err := newNoiseInitiator(fixedKey(2), fixedKey(1).Public())
			if err != nil {
				panic(err)
			}
			msg, _, _, err := hs.WriteMessage(nil, (&hello{id: sessionID{7}, epoch: 3, window: 1 << 18, maxFrame: 1 << 16}).marshal())
			if err != nil {
				panic(err)
			}
			pre := preamble()
			seed = appendMsg(pre[:], msg)
		}
		return seed
	}
}()

// TestWriteFuzzSeeds regenerates the checked-in corpus under
// testdata/fuzz when USL_WRITE_SEEDS=1; otherwise it does nothing.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("USL_WRITE_SEEDS") == "" {
		t.Skip("set USL_WRITE_SEEDS=1 to regenerate testdata/fuzz")
	}
	write := func(target, name string, vals ...string) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		body := "go test fuzz v1\n"
		for _, v := range vals {
			body += v + "\n"
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	q := func(b []byte) string { return fmt.Sprintf("[]byte(%q)", b) }
	write("FuzzFrames", "stream", q(frameSeed()))
	write("FuzzFrames", "truncated", q(frameSeed()[:40]))
	bad := frameSeed()
	bad[0] = 99
	write("FuzzFrames", "unknown-type", q(bad))
	gap := frameSeed()
	binary.BigEndian.PutUint64(gap[8:], 9)
	write("FuzzFrames", "seq-gap", q(gap))
	over := frameSeed()[:headerLen]
	(&frameHeader{typ: frameData, stream: 2, seq: 1, length: 1 << 30}).put(over)
	write("FuzzFrames", "huge-length", q(over))
	write("FuzzHandshake", "valid-first-flight", "byte('\\x00')", q(handshakeSeed()))
	write("FuzzHandshake", "version-3", "byte('\\x00')", q([]byte("USL\x03")))
	write("FuzzHandshake", "empty-reply", "byte('\\x01')", q([]byte("USL\x01\x00\x00")))
	write("FuzzHandshake", "garbage", "byte('\\x00')", q([]byte("GET / HTTP/1.1\r\n\r\n")))
	short := append([]byte(nil), handshakeSeed()...)
	write("FuzzHandshake", "truncated", "byte('\\x00')", q(short[:len(short)/2]))
	flip := append([]byte(nil), handshakeSeed()...)
	flip[len(flip)-1] ^= 1
	write("FuzzHandshake", "bit-flip", "byte('\\x00')", q(flip))
}
