package auth

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func testSet(t testing.TB) *KeySet {
	ks, err := NewKeySet(2, map[uint32][]byte{1: []byte("old-key-0123456789abcdef"), 2: []byte("new-key-0123456789abcdef")})
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func TestMintVerify(t *testing.T) {
	ks := testSet(t)
	now := time.Now()
	tok, err := ks.Mint(42, "phone-1", now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	c, err := ks.Verify(tok, now)
	if err != nil || c.UID != 42 || c.Device != "phone-1" || c.KeyID != 2 {
		t.Fatalf("claims %+v err %v", c, err)
	}
	if _, err := ks.Verify(tok, now.Add(2*time.Hour)); err != ErrExpired {
		t.Fatalf("expired: %v", err)
	}
}

func TestEveryBitFlipRejected(t *testing.T) {
	ks := testSet(t)
	tok, _ := ks.Mint(7, "d", time.Now().Add(time.Hour))
	raw, _ := base64.RawURLEncoding.DecodeString(tok)
	for i := range raw {
		for bit := 0; bit < 8; bit++ {
			b := append([]byte(nil), raw...)
			b[i] ^= 1 << bit
			if _, err := ks.Verify(base64.RawURLEncoding.EncodeToString(b), time.Now()); err == nil {
				t.Fatalf("flip of byte %d bit %d accepted", i, bit)
			}
		}
	}
}

func TestRotationAndUnknownKey(t *testing.T) {
	old, _ := NewKeySet(1, map[uint32][]byte{1: []byte("old-key-0123456789abcdef")})
	tok, _ := old.Mint(1, "", time.Now().Add(time.Hour))
	if _, err := testSet(t).Verify(tok, time.Now()); err != nil {
		t.Fatalf("token of a still-listed key rejected: %v", err)
	}
	other, _ := NewKeySet(9, map[uint32][]byte{9: []byte("other-key-0123456789abc")})
	if _, err := other.Verify(tok, time.Now()); err != ErrUnknownKey {
		t.Fatalf("unknown key: %v", err)
	}
	same, _ := NewKeySet(1, map[uint32][]byte{1: []byte("a-different-secret-here!")})
	if _, err := same.Verify(tok, time.Now()); err != ErrBadMAC {
		t.Fatalf("wrong secret: %v", err)
	}
}

func TestKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d", "keys.json")
	ks, created, err := LoadOrCreate(path)
	if err != nil || !created {
		t.Fatal(err, created)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", st.Mode())
	}
	tok, _ := ks.Mint(3, "", time.Now().Add(time.Minute))
	again, created, err := LoadOrCreate(path)
	if err != nil || created {
		t.Fatal(err, created)
	}
	if _, err := again.Verify(tok, time.Now()); err != nil {
		t.Fatalf("reloaded key set rejects its own token: %v", err)
	}
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreate(path); err == nil {
		t.Fatal("corrupt key file accepted")
	}
}

func BenchmarkVerify(b *testing.B) {
	ks := testSet(b)
	tok, _ := ks.Mint(1, "device-123", time.Now().Add(time.Hour))
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ks.Verify(tok, now); err != nil {
			b.Fatal(err)
		}
	}
}
