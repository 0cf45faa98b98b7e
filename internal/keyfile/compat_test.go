package keyfile_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/fleet"
	"github.com/longlink/longlink/secure"
)

// Key files as auth, secure and fleet wrote them before they shared
// keyfile (auth.CreateKeyFile, secure.SaveKeys of keys 1 and 2, fleet keys
// created then rotated).
const (
	oldTokenKeys = `{
  "active": 1,
  "keys": [
    {
      "id": 1,
      "secret": "777b19a4868c1390518bd3f248a2d4850dd340309f0919806cff551b59a18ade",
      "created": "2026-12-01T16:17:03Z"
    }
  ]
}
`
	oldServerKeys = `{
  "active": 2,
  "keys": [
    {
      "id": 1,
      "private": "c7f341deb1d44a00e4a78c1247a3d0c9047ccd56c691c58e2ed27ac932e68911"
    },
    {
      "id": 2,
      "private": "9f11115a08c6c17fb8aa2f1d15df14bac9dc9116a996f218396d95a08f8c0c82"
    }
  ]
}
`
	oldFleetKeys = `{
  "active": 2,
  "keys": [
    {
      "id": 1,
      "private": "8755c7b086e55c85e369eec0efc305e56dd8ad0028430111eee46d36f10a0ec8"
    },
    {
      "id": 2,
      "private": "8d26c12f9d2da49d091706e72173ef05bcc3db061f0e03d2ca6f984ec05dbb16"
    }
  ]
}
`
)

// TestOldKeyFilesStillLoad: files written before keyfile load with the
// same keys, and saving them again writes the same bytes.
func TestOldKeyFilesStillLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ks, err := auth.LoadKeyFile(write("keys.json", oldTokenKeys))
	if err != nil || ks.Active() != 1 {
		t.Fatalf("token keys: %v", err)
	}
	tok, err := ks.Mint(7, "", time.Now().Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if c, err := ks.Verify(tok, time.Now()); err != nil || c.UID != 7 {
		t.Fatalf("token keys verify: %v", err)
	}

	sr, err := secure.LoadKeyRing(write("server-keys.json", oldServerKeys))
	if err != nil || sr.Active().ID != 2 || len(sr.IDs()) != 2 {
		t.Fatalf("server keys: %v", err)
	}
	if err := secure.SaveKeyRing(filepath.Join(dir, "s2"), sr); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "s2")); string(b) != oldServerKeys {
		t.Fatalf("server keys saved again:\n%s\nwant\n%s", b, oldServerKeys)
	}

	fr, err := fleet.LoadKeys(write("fleet-keys.json", oldFleetKeys))
	if err != nil || fr.Active() != 2 || len(fr.IDs()) != 2 {
		t.Fatalf("fleet keys: %v", err)
	}
	if b, err := fleet.MarshalKeys(fr.Keys(), fr.Active()); err != nil || string(b) != oldFleetKeys {
		t.Fatalf("fleet keys marshalled again:\n%s\nwant\n%s", b, oldFleetKeys)
	}
	if _, err := fleet.Verify(fr.Sign([]byte{0x08, 0x01}), fr.Pins()); err != nil {
		t.Fatalf("fleet keys sign: %v", err)
	}
}
