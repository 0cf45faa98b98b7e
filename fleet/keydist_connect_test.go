package fleet

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/longlink/longlink/push"
)

// TestFleetKeysFollowedOnceConnected: the router's NATS connection is not
// up when FollowKeys starts (RetryOnFailedConnect, the store still down
// for longer than a fetch's timeout); the published keys must be applied
// soon after it comes up, not at the next poll (an hour here).
func TestFleetKeysFollowedOnceConnected(t *testing.T) {
	defer func(w time.Duration) { startWait = w }(startWait)
	startWait = 200 * time.Millisecond
	sec := push.Secret("0123456789abcdef0123456789abcdef")
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := t.TempDir()
	start := func(listen string) *server.Server {
		ns, err := push.StartEmbedded(push.EmbeddedConfig{Listen: listen, Secret: sec, JetStreamDir: dir, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		return ns
	}
	ns := start("127.0.0.1:0")
	url := ns.ClientURL()
	admin, err := push.Connect(url, "admin", quiet, push.ClientAuth{Secret: sec}.As(push.RoleAdmin))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := PublishKeys(ctx, admin, 1, map[string][]byte{KeyFleet: []byte("f1")}); err != nil {
		t.Fatal(err)
	}
	admin.Close()
	addr := ns.Addr().String() // the same port again: the router keeps its URL
	ns.Shutdown()

	router, err := push.Connect(url, "router", quiet, push.ClientAuth{Secret: sec}.As(push.RoleRouter))
	if err != nil {
		t.Fatal(err)
	}
	defer router.Close()
	if router.IsConnected() {
		t.Fatal("connected to a stopped NATS")
	}
	got := make(chan string, 4)
	f, err := FollowKeys(router, time.Hour, quiet, func(name string, v []byte, _ uint64) { got <- name + "=" + string(v) })
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	time.Sleep(6 * time.Second) // longer than a fetch's 5 s timeout
	if l, err := net.Listen("tcp", addr); err != nil {
		t.Skipf("the NATS port was taken meanwhile: %v", err)
	} else {
		l.Close()
	}
	ns = start(addr)
	defer ns.Shutdown()
	up := time.Now()
	select {
	case s := <-got:
		if s != "fleet=f1" {
			t.Fatalf("applied %q", s)
		}
		t.Logf("applied %v after NATS came up", time.Since(up).Round(time.Millisecond))
	case <-time.After(8 * time.Second):
		t.Fatal("the published keys were not applied within 8 s of NATS coming up (poll is an hour)")
	}
}
