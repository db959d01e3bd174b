package usl

import (
	"strings"
	"testing"
)

func TestKeyRoundTrip(t *testing.T) {
	k, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	k2, err := ParsePrivateKey(" " + k.String() + "\n")
	if err != nil || k2 != k {
		t.Fatalf("ParsePrivateKey: %v, equal=%v", err, k2 == k)
	}
	p, err := ParsePublicKey(k.Public().String())
	if err != nil || p != k.Public() {
		t.Fatalf("ParsePublicKey: %v", err)
	}
	if len(k.String()) != 44 {
		t.Fatalf("key text is %d chars, want 44", len(k.String()))
	}
}

// RFC 7748 section 6.1 test vector (Alice).
func TestPublicVector(t *testing.T) {
	priv, _ := ParsePrivateKey("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=")
	if got, want := priv.Public().String(), "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="; got != want {
		t.Fatalf("public = %s, want %s", got, want)
	}
}

func TestParseKeyErrors(t *testing.T) {
	for _, s := range []string{"", "not base64!", "AAAA", strings.Repeat("A", 40)} {
		if _, err := ParsePublicKey(s); err == nil {
			t.Errorf("ParsePublicKey(%q) succeeded", s)
		}
	}
}
