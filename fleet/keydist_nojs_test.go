package fleet_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/longlink/longlink/fleet"
	"github.com/longlink/longlink/push"
)

// TestPublishKeysWithoutJetStream: `longlink keys publish` against a NATS
// without JetStream (a gateway's embedded one, by default) says so, not
// "no responders available for request".
func TestPublishKeysWithoutJetStream(t *testing.T) {
	url, sec := natsWithRoles(t)
	nc := connect(t, url, sec, push.RoleAdmin)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := fleet.PublishKeys(ctx, nc, 1, map[string][]byte{fleet.KeyFleet: []byte("{}")})
	if err == nil || !strings.Contains(err.Error(), "no JetStream") {
		t.Fatalf("want an error naming the missing JetStream, got %v", err)
	}
}
