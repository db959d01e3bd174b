package usl

import (
	"bufio"
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
	f.Add(sackSeed())
	f.Add(rekeySeed())
	f.Add(reorderSeed())
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
		p.rc, _ = newRecordConn(fuzzConn{bytes.NewReader(nil)}, &handshakeResult{br: bufio.NewReader(bytes.NewReader(nil))})
		s.paths = []*path{p}
		// A stream this side opened, so that ACCEPT, WINDOW and RESET
		// for our own ids reach a waiting opener.
		s.mu.Lock()
		mine := newStream(s, s.nextStream, nil)
		mine.opener = true
		s.streams[mine.id] = mine
		s.pushLocked(frameOpen, mine, 0)
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
			if h.typ == frameRekey {
				s.mu.Lock()
				err := p.rekeyLocked(payload)
				s.mu.Unlock()
				if err != nil {
					break
				}
			}
			var data *[]byte
			if h.typ == frameData {
				data = s.pool.get(len(payload))
				copy(*data, payload)
			}
			if err := s.handleFrame(p, h, payload, data); err != nil {
				break
			}
			s.mu.Lock()
			held := s.reorderMem
			s.mu.Unlock()
			if held < 0 || held > cfg.ReorderBuffer {
				t.Fatalf("%d bytes held past a gap, bound %d", held, cfg.ReorderBuffer)
			}
		}
		s.end(ErrSessionClosed, Closed)
		if s.reorderMem != 0 || len(s.heldOrdered) != 0 || len(s.recvRanges) != 0 {
			t.Fatalf("after the end: %d bytes, %d frames, %d ranges still held", s.reorderMem, len(s.heldOrdered), len(s.recvRanges))
		}
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
	add(frameHeader{typ: frameData, stream: 1, seq: 2, sseq: 1}, []byte("hello"))
	add(frameHeader{typ: frameWindow, stream: 1, seq: 3, sseq: 2}, u64(1<<20))
	add(frameHeader{typ: frameFin, stream: 1, seq: 4, sseq: 3}, nil)
	add(frameHeader{typ: framePing}, u64(12345))
	add(frameHeader{typ: frameAck, ack: 0}, nil)
	add(frameHeader{typ: frameReset, stream: 1, seq: 5, sseq: 4}, []byte{byte(ResetRefused)})
	add(frameHeader{typ: frameClose, seq: 6}, nil)
	return b
}

// reorderSeed is what two paths deliver: stream 3's frames and a CLOSE
// ahead of stream 1's, which arrive last, a duplicate, and an OPEN held
// for session order.
func reorderSeed() []byte {
	var b []byte
	add := func(h frameHeader, payload []byte) {
		h.length = uint32(len(payload))
		var hb [headerLen]byte
		h.put(hb[:])
		b = append(append(b, hb[:]...), payload...)
	}
	open := []byte{1, 6, 10, 0, 0, 1, 0, 80}
	add(frameHeader{typ: frameOpen, stream: 1, seq: 1}, open)
	add(frameHeader{typ: frameOpen, stream: 3, seq: 2}, open)
	add(frameHeader{typ: frameData, stream: 3, seq: 5, sseq: 2}, []byte("three-b"))
	add(frameHeader{typ: frameData, stream: 3, seq: 4, sseq: 1}, []byte("three-a"))
	add(frameHeader{typ: frameOpen, stream: 5, seq: 7}, open)
	add(frameHeader{typ: frameData, stream: 5, seq: 8, sseq: 1}, []byte("five"))
	add(frameHeader{typ: frameClose, seq: 9}, nil)
	add(frameHeader{typ: frameData, stream: 3, seq: 4, sseq: 1}, []byte("three-a"))
	add(frameHeader{typ: frameData, stream: 1, seq: 3, sseq: 1}, []byte("one"))
	add(frameHeader{typ: frameData, stream: 1, seq: 6, sseq: 2}, []byte("one-b"))
	return b
}

// sackSeed is a SACK with two ranges above the ack.
func sackSeed() []byte {
	var hb [headerLen]byte
	payload := binary.BigEndian.AppendUint64(nil, 5)
	for _, v := range []uint64{5, 9, 12} {
		payload = binary.BigEndian.AppendUint64(payload, v)
	}
	(&frameHeader{typ: frameSack, length: uint32(len(payload))}).put(hb[:])
	return append(hb[:], payload...)
}

// rekeySeed is a REKEY request with the base point as its key.
func rekeySeed() []byte {
	var pub [32]byte
	pub[0] = 9
	return rekeyFrame(rekeyRequest, pub)
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

// FuzzHandshake drives a real listener with first messages built from
// valid keys, so the input gets past mac1 and Noise and reaches what comes
// after: timestamp check, session lookup, key confirmation, commit,
// attach and fencing. The input is a sequence of handshakes, each
//
//	u8 n | n bytes of hello payload (sent as is, any length) | u8 m | m bytes of first-record plaintext
//
// Even-numbered handshakes come from the allowed key, odd ones from a
// second allowed key, so ownership and fencing across keys are reached.
// Whatever the input, the listener must not panic, must hold at most
// MaxSessionsPerKey sessions per key, and must announce a session only
// after its key-confirming record.
func FuzzHandshake(f *testing.F) {
	for _, seed := range handshakeSeeds() {
		f.Add(seed)
	}
	f.Fuzz(fuzzHandshake)
}

func fuzzHandshake(t *testing.T, in []byte) {
	server, c1, c2 := fixedKey(1), fixedKey(2), fixedKey(3)
	ml := &memListener{ch: make(chan net.Conn), done: make(chan struct{})}
	cfg := Config{PrivateKey: server, PeerKeys: []PublicKey{c1.Public(), c2.Public()},
		HandshakeTimeout: time.Second, FirstMessageTimeout: time.Second, MaxSessionsPerKey: 2,
		SessionTimeout: 5 * time.Millisecond}
	l, err := NewListener(ml, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := 0; i < 4 && len(in) > 0; i++ {
		n := int(in[0])
		in = in[1:]
		payload := in[:min(n, len(in))]
		in = in[len(payload):]
		var record []byte
		if len(in) > 0 {
			m := int(in[0])
			in = in[1:]
			record = in[:min(m, len(in))]
			in = in[len(record):]
		}
		key := c1
		if i%2 == 1 {
			key = c2
		}
		fuzzOneHandshake(t, ml, key, server.Public(), payload, record)
	}
	l.mu.Lock()
	perKey := map[PublicKey]int{}
	for _, s := range l.sessions {
		perKey[s.peer]++
	}
	l.mu.Unlock()
	for k, n := range perKey {
		if n > 2 {
			t.Fatalf("%d sessions of key %s, limit 2", n, k)
		}
	}
}

// FuzzFirstMessage feeds arbitrary bytes to the handshake parsers that
// see unauthenticated input: the responder's first-message reader (with
// mac1), the hello and reply decoders, and the initiator reading an
// arbitrary answer. None may panic, and nothing without a valid mac1 for
// the listener's key may pass the first step.
func FuzzFirstMessage(f *testing.F) {
	f.Add([]byte("USL\x02\x00\x00"))
	f.Add([]byte("USL\x01"))
	f.Add(validFirstFlight(f, fixedKey(2), fixedKey(1).Public()))
	f.Fuzz(func(t *testing.T, in []byte) {
		server := fixedKey(1).Public()
		mk := mac1Key(server)
		msg, err := readFirstMessage(fuzzConn{bytes.NewReader(in)}, &mk)
		if err == nil {
			want := mac1(&mk, in[:preambleLen+2+msg1Len])
			if !bytes.Equal(want[:], in[preambleLen+2+msg1Len:][:mac1Len]) || len(msg) != msg1Len {
				t.Fatal("a first message without a valid mac1 passed")
			}
		}
		clientHandshake(fuzzConn{bytes.NewReader(in)}, fixedKey(2), server,
			hello{id: sessionID{1}, epoch: 1, timestamp: 1, window: 1, maxFrame: MinMaxFrame})
		parseHello(in)
		parseReply(in)
	})
}

// fuzzOneHandshake dials ml once with a message 1 carrying payload from
// key, reads the answer, and if there is one sends record as the first
// record. It returns when the listener is done with the connection.
func fuzzOneHandshake(t *testing.T, ml *memListener, key PrivateKey, server PublicKey, payload, record []byte) {
	a, b := net.Pipe()
	defer a.Close()
	select {
	case ml.ch <- b:
	case <-time.After(time.Second):
		t.Fatal("listener does not accept")
	}
	a.SetDeadline(time.Now().Add(2 * time.Second))
	hs, err := newNoiseInitiator(key, server)
	if err != nil {
		t.Fatal(err)
	}
	msg1, _, _, err := hs.WriteMessage(nil, payload)
	if err != nil {
		t.Fatal(err)
	}
	pre := preamble()
	out := appendMsg(pre[:], msg1)
	mk := mac1Key(server)
	m := mac1(&mk, out)
	if _, err := a.Write(append(out, m[:]...)); err != nil {
		return // refused at once: wrong length
	}
	var rp [preambleLen]byte
	if _, err := io.ReadFull(a, rp[:]); err != nil {
		return // silence
	}
	msg2, err := readMsg(a)
	if err != nil {
		t.Fatalf("listener answered a preamble and then %v", err)
	}
	rb, cs1, cs2, err := hs.ReadMessage(nil, msg2)
	if err != nil {
		t.Fatalf("listener's answer does not decrypt: %v", err)
	}
	rep, err := parseReply(rb)
	if err != nil {
		t.Fatalf("listener's reply: %v", err)
	}
	if rep.status != statusOK {
		return
	}
	rc, err := newRecordConn(a, &handshakeResult{send: cs1.UnsafeKey(), recv: cs2.UnsafeKey(), br: bufio.NewReader(a)})
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.writeSegments([][]byte{record}); err != nil {
		return
	}
	// Whatever the record held, the listener now runs a path or drops it.
	a.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
	io.Copy(io.Discard, a)
}

// handshakeSeeds are valid handshake sequences: a first contact with an
// ACK, a resume, a replay of the same timestamp, a restarted epoch that
// fences, and one with frames in the confirming record.
func handshakeSeeds() [][]byte {
	h := func(id byte, epoch, peerEpoch, ts uint64, flags byte) []byte {
		return (&hello{id: sessionID{id}, epoch: epoch, peerEpoch: peerEpoch, timestamp: ts,
			window: 1 << 18, maxFrame: 1 << 16, pathID: 1, flags: flags}).marshal()
	}
	frames := func(fs ...frameHeader) []byte {
		var b []byte
		for _, f := range fs {
			var hb [headerLen]byte
			f.put(hb[:])
			b = append(b, hb[:]...)
		}
		return b
	}
	ack := frames(frameHeader{typ: frameAck})
	one := func(payload, record []byte) []byte {
		b := append([]byte{byte(len(payload))}, payload...)
		return append(append(b, byte(len(record))), record...)
	}
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	return [][]byte{
		one(h(1, 5, 0, 10, 0), ack),
		cat(one(h(1, 5, 0, 10, 0), ack), one(h(2, 6, 0, 11, 0), ack), one(h(3, 7, 0, 20, 0), ack)),
		cat(one(h(1, 5, 0, 10, 0), ack), one(h(9, 5, 0, 10, 0), ack), one(h(1, 5, 0, 10, 0), ack)),
		cat(one(h(1, 5, 0, 10, 0), nil), one(h(2, 6, 0, 11, 0), ack), one(h(1, 5, 0, 12, helloJoin), ack)),
		one(h(4, 5, 0, 10, 0), frames(frameHeader{typ: frameOpen, stream: 1, seq: 1}, frameHeader{typ: frameClose, seq: 2})),
		one(h(4, 5, 77, 10, 0), ack),
		one([]byte("short"), ack),
	}
}

// FuzzRecords feeds the record layer: arbitrary bytes as a record stream
// under a fixed key (the seeds are valid records, so inputs near them get
// past the AEAD), and, as a round trip, arbitrary plaintext sealed in
// pieces of split bytes and opened again, which must give the plaintext
// back whatever the sizes.
func FuzzRecords(f *testing.F) {
	for _, s := range recordSeeds() {
		f.Add(s, uint16(100))
	}
	f.Add([]byte{0, 3, 1, 2, 3}, uint16(0))
	f.Fuzz(func(t *testing.T, in []byte, split uint16) {
		key := handshakeResult{send: [32]byte{9}, recv: [32]byte{9}}
		key.br = bufio.NewReader(bytes.NewReader(in))
		rc, err := newRecordConn(fuzzConn{bytes.NewReader(nil)}, &key)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1+int(split)%70000)
		for range 1000 {
			if _, err := rc.Read(buf); err != nil {
				break
			}
		}

		var wire bytes.Buffer
		w, err := newRecordConn(bufConn{&wire}, &key)
		if err != nil {
			t.Fatal(err)
		}
		var segs [][]byte
		for rest := in; len(rest) > 0; {
			n := min(len(rest), 1+int(split))
			segs = append(segs, rest[:n])
			rest = rest[n:]
		}
		if err := w.writeSegments(segs); err != nil {
			t.Fatal(err)
		}
		key.br = bufio.NewReader(&wire)
		r, _ := newRecordConn(fuzzConn{bytes.NewReader(nil)}, &key)
		got := make([]byte, len(in))
		if _, err := io.ReadFull(r, got); err != nil || !bytes.Equal(got, in) {
			t.Fatalf("round trip of %d bytes in pieces of %d: %v", len(in), 1+int(split), err)
		}
	})
}

// recordSeeds are valid record streams under FuzzRecords' key.
func recordSeeds() [][]byte {
	key := handshakeResult{send: [32]byte{9}, recv: [32]byte{9}}
	var out [][]byte
	for _, segs := range [][][]byte{{[]byte("hello")}, {frameSeed(), {}, []byte("x")}, {make([]byte, 3000)}} {
		var wire bytes.Buffer
		w, _ := newRecordConn(bufConn{&wire}, &key)
		w.writeSegments(segs)
		out = append(out, wire.Bytes())
	}
	return out
}

// bufConn is a net.Conn that writes into a buffer.
type bufConn struct{ w *bytes.Buffer }

func (c bufConn) Read(p []byte) (int, error)       { return 0, io.EOF }
func (c bufConn) Write(p []byte) (int, error)      { return c.w.Write(p) }
func (c bufConn) Close() error                     { return nil }
func (c bufConn) LocalAddr() net.Addr              { return memAddr("buf") }
func (c bufConn) RemoteAddr() net.Addr             { return memAddr("buf") }
func (c bufConn) SetDeadline(time.Time) error      { return nil }
func (c bufConn) SetReadDeadline(time.Time) error  { return nil }
func (c bufConn) SetWriteDeadline(time.Time) error { return nil }

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
	names := []string{"first-contact", "three-sessions", "replay", "unconfirmed-then-join", "frames-in-confirmation", "unknown-resume", "short-hello"}
	for i, seed := range handshakeSeeds() {
		write("FuzzHandshake", names[i], q(seed))
	}
	for i, seed := range recordSeeds() {
		write("FuzzRecords", fmt.Sprintf("valid-%d", i), q(seed), "uint16(100)")
	}
	write("FuzzRecords", "short-record", q([]byte{0, 3, 1, 2, 3}), "uint16(0)")
	write("FuzzFrames", "sack", q(sackSeed()))
	write("FuzzFirstMessage", "valid", q(validFirstFlight(t, fixedKey(2), fixedKey(1).Public())))
	write("FuzzFirstMessage", "v1-preamble", q([]byte("USL\x01")))
	write("FuzzFirstMessage", "garbage", q([]byte("GET / HTTP/1.1\r\n\r\n")))
	write("FuzzFrames", "rekey-request", q(rekeySeed()))
}
