package logic

import (
	"path/filepath"
	"strings"
	"testing"
)

// A store off loopback needs TLS: plaintext is refused before any dial, and
// the TLS files are checked.
func TestStoreOffLoopbackNeedsTLS(t *testing.T) {
	if _, err := OpenStore("nats://192.0.2.7:4222", StoreOptions{}); err == nil || !strings.Contains(err.Error(), "not on loopback") {
		t.Fatalf("plaintext store off loopback: %v", err)
	}
	missing := filepath.Join(t.TempDir(), "ca.pem")
	if _, err := OpenStore("nats://192.0.2.7:4222", StoreOptions{TLSCA: missing}); err == nil || !strings.Contains(err.Error(), "ca.pem") {
		t.Fatalf("missing CA file: %v", err)
	}
}
