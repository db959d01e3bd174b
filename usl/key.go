package usl

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"

	"golang.org/x/crypto/curve25519"
)

// KeyLen is the length of a Curve25519 key, private or public.
const KeyLen = 32

// PrivateKey is a Curve25519 static private key. Its text form is base64, as
// in WireGuard, so `wg genkey`-style files and tooling habits carry over.
type PrivateKey [KeyLen]byte

// PublicKey is a Curve25519 public key: a peer's identity.
type PublicKey [KeyLen]byte

// GeneratePrivateKey returns a fresh, clamped private key.
func GeneratePrivateKey() (PrivateKey, error) {
	var k PrivateKey
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("generate key: %w", err)
	}
	k.clamp()
	return k, nil
}

// clamp applies the RFC 7748 clamping, so that keys written by hand or by
// other tools behave exactly like generated ones.
func (k *PrivateKey) clamp() {
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
}

// Public derives the public key.
func (k PrivateKey) Public() PublicKey {
	var p PublicKey
	pub, err := curve25519.X25519(k[:], curve25519.Basepoint)
	if err != nil {
		// Only a low-order result fails, and a clamped scalar times the
		// base point never is one.
		panic("usl: X25519 with base point failed: " + err.Error())
	}
	copy(p[:], pub)
	return p
}

func (k PrivateKey) String() string { return base64.StdEncoding.EncodeToString(k[:]) }
func (k PublicKey) String() string  { return base64.StdEncoding.EncodeToString(k[:]) }

// ParsePrivateKey reads a base64 private key, ignoring surrounding space.
func ParsePrivateKey(s string) (PrivateKey, error) {
	var k PrivateKey
	if err := decodeKey(s, k[:], "usltun genkey"); err != nil {
		return k, fmt.Errorf("private key: %w", err)
	}
	k.clamp()
	return k, nil
}

// ParsePublicKey reads a base64 public key, ignoring surrounding space.
func ParsePublicKey(s string) (PublicKey, error) {
	var k PublicKey
	if err := decodeKey(s, k[:], "usltun pubkey"); err != nil {
		return k, fmt.Errorf("public key: %w", err)
	}
	return k, nil
}

// decodeKey decodes a base64 key into dst; printedBy names the command that
// prints this kind of key, for the hint.
func decodeKey(s string, dst []byte, printedBy string) error {
	s = strings.TrimSpace(s)
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return fmt.Errorf("not base64 (%d characters): want 44 characters as printed by `%s`", len(s), printedBy)
	}
	if len(b) != KeyLen {
		return fmt.Errorf("decodes to %d bytes, want %d", len(b), KeyLen)
	}
	copy(dst, b)
	return nil
}
