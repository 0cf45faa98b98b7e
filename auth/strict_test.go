package auth

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var testSecrets = map[uint32][]byte{1: []byte("old-key-0123456789abcdef"), 2: []byte("new-key-0123456789abcdef")}

// TestVerifyRejectsInsertedBytes: base64's decoder skips CR and LF, so a
// token with line breaks inserted used to verify; so did one whose last
// character differed only in unused bits. A token is accepted only as it
// was minted.
func TestVerifyRejectsInsertedBytes(t *testing.T) {
	ks := testSet(t)
	now := time.Now()
	tok, _ := ks.Mint(42, "phone", now.Add(time.Hour))
	var bad []string
	for i := 0; i <= len(tok); i++ {
		for _, ins := range []string{"\n", "\r\n", "\r", " ", "\t", "=", "+", "/", ".", "\x00"} {
			bad = append(bad, tok[:i]+ins+tok[i:])
		}
	}
	bad = append(bad, tok+"==", " "+tok, tok+"\n")
	for _, b := range bad {
		if _, err := ks.Verify(b, now); !errors.Is(err, ErrMalformed) {
			t.Fatalf("token %q accepted or misjudged: %v", b, err)
		}
	}
	// Non-canonical last character: same bytes with nonzero padding bits.
	raw, _ := base64.RawURLEncoding.DecodeString(tok)
	if len(raw)%3 == 0 {
		t.Fatalf("test needs a token whose length leaves padding bits, got %d bytes", len(raw))
	}
	alpha := "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alpha, tok[len(tok)-1])
	for d := 1; d < 4; d++ {
		alt := tok[:len(tok)-1] + string(alpha[last|d])
		if alt == tok {
			continue
		}
		if _, err := ks.Verify(alt, now); err == nil {
			t.Fatalf("non-canonical spelling %q of a minted token accepted", alt)
		}
	}
}

// TestEveryByteChangeRejected: any single byte of the encoded token
// replaced by any other byte fails verification.
func TestEveryByteChangeRejected(t *testing.T) {
	ks := testSet(t)
	now := time.Now()
	tok, _ := ks.Mint(7, "dev-1", now.Add(time.Hour))
	for i := range len(tok) {
		for v := range 256 {
			if byte(v) == tok[i] {
				continue
			}
			b := []byte(tok)
			b[i] = byte(v)
			if _, err := ks.VerifyBytes(b, now); err == nil {
				t.Fatalf("byte %d changed to %#x accepted", i, v)
			}
		}
	}
}

// FuzzVerify: a token verifies only if it is exactly what a key of the set
// mints for the claims it carries, and a token a set accepts is refused by a
// set without its key.
func FuzzVerify(f *testing.F) {
	ks := testSet(f)
	now := time.Unix(1_800_000_000, 0)
	old, _ := NewKeySet(1, map[uint32][]byte{1: testSecrets[1]})
	for _, m := range []*KeySet{ks, old} {
		for _, dev := range []string{"", "dev", strings.Repeat("x", MaxDevice)} {
			tok, _ := m.Mint(1, dev, now.Add(time.Hour))
			f.Add(tok)
			f.Add(tok[:len(tok)-1])
			f.Add(tok + "\n")
		}
	}
	f.Add("")
	f.Add("AAAA")
	other, _ := NewKeySet(9, map[uint32][]byte{9: []byte("other-key-0123456789abc")})
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ks.Verify(s, now)
		if err != nil {
			return
		}
		secret, ok := testSecrets[c.KeyID]
		if !ok {
			t.Fatalf("accepted a token of key %d, not in the set", c.KeyID)
		}
		minter, _ := NewKeySet(c.KeyID, map[uint32][]byte{c.KeyID: secret})
		again, err := minter.Mint(c.UID, c.Device, c.Expiry)
		if err != nil || again != s {
			t.Fatalf("accepted %q, but key %d mints %q for its claims %+v", s, c.KeyID, again, c)
		}
		if _, err := other.Verify(s, now); err == nil {
			t.Fatalf("a key set without key %d accepts %q", c.KeyID, s)
		}
	})
}

// FuzzTamper: any single-byte change (replace, insert, delete) to a minted
// token fails verification.
func FuzzTamper(f *testing.F) {
	ks := testSet(f)
	now := time.Unix(1_800_000_000, 0)
	f.Add(uint64(1), "dev", uint16(0), byte('A'), uint8(0))
	f.Add(uint64(1<<63), "", uint16(40), byte('\n'), uint8(1))
	f.Add(uint64(77), "phone-7", uint16(3), byte('_'), uint8(2))
	f.Fuzz(func(t *testing.T, uid uint64, dev string, pos uint16, v byte, op uint8) {
		if len(dev) > MaxDevice {
			dev = dev[:MaxDevice]
		}
		tok, err := ks.Mint(uid, dev, now.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		i := int(pos) % (len(tok) + 1)
		var bad string
		switch op % 3 {
		case 0: // replace
			i %= len(tok)
			if tok[i] == v {
				return
			}
			bad = tok[:i] + string([]byte{v}) + tok[i+1:]
		case 1: // insert
			bad = tok[:i] + string([]byte{v}) + tok[i:]
		case 2: // delete
			i %= len(tok)
			bad = tok[:i] + tok[i+1:]
		}
		if _, err := ks.Verify(bad, now); err == nil {
			t.Fatalf("tampered token %q (from %q) accepted", bad, tok)
		}
	})
}

func TestKeyFilePermissionsChecked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	if _, err := CreateKeyFile(path); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadKeyFile(path)
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("mode %04o: want an error naming %s and the fix, got %v", mode, path, err)
		}
		if _, _, err := LoadOrCreate(path); err == nil {
			t.Fatalf("mode %04o: LoadOrCreate accepted it", mode)
		}
	}
	for _, mode := range []os.FileMode{0o600, 0o400} {
		os.Chmod(path, mode)
		if _, err := LoadKeyFile(path); err != nil {
			t.Fatalf("mode %04o refused: %v", mode, err)
		}
	}
}

func TestReadSecretFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "admin.token")
	os.WriteFile(p, []byte("s3cret\n"), 0o644)
	if _, err := ReadSecretFile(p); err == nil || !strings.Contains(err.Error(), "chmod 600 "+p) {
		t.Fatalf("0644 secret: %v", err)
	}
	os.Chmod(p, 0o600)
	if b, err := ReadSecretFile(p); err != nil || string(b) != "s3cret\n" {
		t.Fatalf("0600 secret: %q %v", b, err)
	}
	if _, err := ReadSecretFile(filepath.Join(dir, "none")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing: %v", err)
	}
	if _, err := ReadSecretFile(dir); err == nil {
		t.Fatal("a directory read as a secret file")
	}
}

// TestLoadKeyFileNeverCreates: a mistyped path fails with an error naming
// it, and nothing is created there.
func TestLoadKeyFileNeverCreates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "typo")
	path := KeyFile(dir)
	_, err := LoadKeyFile(path)
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), path) {
		t.Fatalf("missing key file: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("LoadKeyFile created %s", dir)
	}
}
