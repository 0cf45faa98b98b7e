package web

import (
	"net/url"
	"testing"

	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/secure"
)

// TestBrowserClientEncrypted: the same browser run against a gateway that
// requires encryption, longlink.js pinning its key (Noise NK, AES-256-GCM
// on WebCrypto): AUTH in the first flight, a sealed call, a sealed logical
// error and a sealed push.
func TestBrowserClientEncrypted(t *testing.T) {
	k, err := secure.GenerateKey(9, nil)
	if err != nil {
		t.Fatal(err)
	}
	ring, _ := secure.NewKeyRing([]secure.ServerKey{k}, 9)
	runBrowserClient(t, func(c *gateway.Config) {
		c.ServerKeys, c.Encryption = ring, gateway.EncryptionRequired
	}, url.Values{"serverKey": {k.Pin()}})
}
