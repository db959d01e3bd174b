package usl

// In-band rekey of a path (docs/protocol.md §6), with a fresh
// Diffie-Hellman, so a key stolen from memory stops decrypting the path
// within one RekeyInterval, as WireGuard's 2-minute rekey does:
//
//	A→B REKEY(request, eA)
//	B   K = HKDF(chain, DH(eB, eA)): new chain, key A→B, key B→A.
//	    Sends REKEY(response, eB) as the last frame of a record under its
//	    old send key, then seals with key B→A.
//	A   on the response (it must end its record) derives K, opens the
//	    next record with key B→A, sends REKEY(switch) as the last frame of
//	    a record under its old key, then seals with key A→B.
//	B   on the switch (it must end its record) opens with key A→B.
//
// Data keeps flowing under the old keys meanwhile, so nothing stalls. If
// both sides request at once, the dialer's request wins: the listener
// drops its own and answers. Each REKEY frame travels as a record of its
// own, which makes "last frame of its record" trivially true for the
// sender. Record counters restart at 0 with every key.

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"time"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/hkdf"
)

// REKEY payload: flags u8, then a 32-byte X25519 public key (zero for
// switch).
const (
	rekeyRequest  = 1
	rekeyResponse = 2
	rekeySwitch   = 3
)

// Where a path is in a rekey.
const (
	rekeyIdle      = iota
	rekeyRequested // A: request sent, waiting for the response
	rekeyResponded // B: response sent, waiting for the switch
)

// rekeyState is a path's rekey machine. Guarded by the session lock; the
// key switches it asks for run on the path's reader (receive key) and
// writer (send key) goroutines, which own those halves of the recordConn.
type rekeyState struct {
	chain    [32]byte
	phase    int
	eph      [32]byte  // A: our ephemeral private key
	recvNext [32]byte  // B: the receive key the switch frame installs
	out      []byte    // a REKEY frame for the writer to send as its own record
	sendNext *[32]byte // the send key the writer installs right after out
}

func newBlake2s() hash.Hash {
	h, _ := blake2s.New256(nil) // unkeyed: cannot fail
	return h
}

// chainStart is the first chaining secret of a path: Noise's handshake
// hash (the channel binding) mixed with both directions' keys, initiator
// to responder first.
func chainStart(binding []byte, i2r, r2i [32]byte) [32]byte {
	var out [32]byte
	ikm := append(append([]byte(nil), i2r[:]...), r2i[:]...)
	io.ReadFull(hkdf.New(newBlake2s, ikm, binding, []byte("usl v2 chain")), out[:])
	return out
}

// rekeyDerive is K = HKDF-BLAKE2s(salt = chain, ikm = dh): the next chain,
// the requester-to-responder key and the responder-to-requester key.
func rekeyDerive(chain [32]byte, dh []byte) (next, reqKey, respKey [32]byte) {
	r := hkdf.New(newBlake2s, dh, chain[:], []byte("usl v2 rekey"))
	io.ReadFull(r, next[:])
	io.ReadFull(r, reqKey[:])
	io.ReadFull(r, respKey[:])
	return
}

func newEphemeral() (priv, pub [32]byte, err error) {
	if _, err = rand.Read(priv[:]); err != nil {
		return
	}
	p, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	copy(pub[:], p)
	return
}

func rekeyFrame(flags byte, pub [32]byte) []byte {
	b := make([]byte, headerLen+rekeyLen)
	h := frameHeader{typ: frameRekey, length: rekeyLen}
	h.put(b)
	b[headerLen] = flags
	copy(b[headerLen+1:], pub[:])
	return b
}

// maybeStartRekeyLocked starts a rekey as A once the send key is due. The
// writer calls it, so reading the send key's age is race-free.
func (p *path) maybeStartRekeyLocked(now time.Time) {
	rk := &p.rk
	if rk.phase != rekeyIdle || rk.out != nil || p.rc == nil {
		return
	}
	cfg := &p.s.cfg
	if now.Sub(p.rc.sendSince) < cfg.RekeyInterval && p.rc.sendN < cfg.RekeyRecords {
		return
	}
	priv, pub, err := newEphemeral()
	if err != nil {
		return // no randomness now: the next round tries again
	}
	rk.eph, rk.phase, rk.out, rk.sendNext = priv, rekeyRequested, rekeyFrame(rekeyRequest, pub), nil
}

var errRekeyOrder = errors.New("protocol: REKEY out of order")

// rekeyLocked handles a received REKEY frame on the reader goroutine.
func (p *path) rekeyLocked(payload []byte) error {
	s, rk := p.s, &p.rk
	flags := payload[0]
	var peer [32]byte
	copy(peer[:], payload[1:])
	zero := [32]byte{}
	if (flags == rekeySwitch) != (subtle.ConstantTimeCompare(peer[:], zero[:]) == 1) {
		return fmt.Errorf("protocol: REKEY flags %d with a wrong key field", flags)
	}
	switch flags {
	case rekeyRequest:
		switch {
		case rk.phase == rekeyResponded:
			return errRekeyOrder
		case rk.phase == rekeyRequested && s.dialer:
			return nil // both asked at once: ours wins, the listener answers it
		}
		// Idle, or the listener yielding its own request to the dialer's.
		priv, pub, err := newEphemeral()
		if err != nil {
			return fmt.Errorf("rekey: %w", err)
		}
		dh, err := curve25519.X25519(priv[:], peer[:])
		if err != nil {
			return fmt.Errorf("protocol: REKEY request: %w", err)
		}
		next, reqKey, respKey := rekeyDerive(rk.chain, dh)
		rk.chain, rk.recvNext, rk.phase = next, reqKey, rekeyResponded
		rk.out, rk.sendNext = rekeyFrame(rekeyResponse, pub), &respKey
		p.poke()
	case rekeyResponse:
		if rk.phase != rekeyRequested || rk.out != nil {
			return errRekeyOrder
		}
		if !p.rc.atRecordEnd() {
			return errors.New("protocol: REKEY response not at the end of its record")
		}
		dh, err := curve25519.X25519(rk.eph[:], peer[:])
		if err != nil {
			return fmt.Errorf("protocol: REKEY response: %w", err)
		}
		next, reqKey, respKey := rekeyDerive(rk.chain, dh)
		if err := p.rc.setRecv(respKey); err != nil {
			return err
		}
		rk.chain, rk.eph, rk.phase = next, [32]byte{}, rekeyIdle
		rk.out, rk.sendNext = rekeyFrame(rekeySwitch, zero), &reqKey
		s.rekeys++
		p.poke()
	case rekeySwitch:
		if rk.phase != rekeyResponded || rk.out != nil {
			return errRekeyOrder
		}
		if !p.rc.atRecordEnd() {
			return errors.New("protocol: REKEY switch not at the end of its record")
		}
		if err := p.rc.setRecv(rk.recvNext); err != nil {
			return err
		}
		rk.recvNext, rk.phase = [32]byte{}, rekeyIdle
		s.rekeys++
		s.logLocked(slog.LevelDebug, "path rekeyed", "remote", p.remote, "rekeys", s.rekeys)
	default:
		return fmt.Errorf("protocol: REKEY flags %d", flags)
	}
	return nil
}
