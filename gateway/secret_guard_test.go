package gateway

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAdminTokenPermissionsChecked (issue 16 item 13): an admin.token that
// group or others may read is refused with the path and the fix; the one
// the gateway creates is 0600 and loads again.
func TestAdminTokenPermissionsChecked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "admin.token")
	tok, created, err := LoadOrCreateAdminToken(path)
	if err != nil || !created || tok == "" {
		t.Fatalf("create: %q %v %v", tok, created, err)
	}
	if again, created, err := LoadOrCreateAdminToken(path); err != nil || created || again != tok {
		t.Fatalf("reload: %q %v %v", again, created, err)
	}
	os.Chmod(path, 0o644)
	_, _, err = LoadOrCreateAdminToken(path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("0644 admin token: want an error naming %s and chmod 600, got %v", path, err)
	}
}
