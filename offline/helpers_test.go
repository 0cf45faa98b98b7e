package offline

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/longlink/longlink/offline/apns"
	"github.com/longlink/longlink/offline/standin"
	"github.com/longlink/longlink/push"
)

var quiet = slog.New(slog.DiscardHandler)

// natsEnv is an embedded NATS with JetStream and role authentication, as
// the gateway's hub runs it.
type natsEnv struct {
	url string
	sec push.Secret
}

func startNATS(t testing.TB, dir string) *natsEnv {
	t.Helper()
	sec := make(push.Secret, 32)
	_, _ = rand.Read(sec)
	ns, err := push.StartEmbedded(push.EmbeddedConfig{Listen: "127.0.0.1:0", JetStreamDir: filepath.Join(dir, "js"), Secret: sec, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	return &natsEnv{url: ns.ClientURL(), sec: sec}
}

func (e *natsEnv) conn(t testing.TB, r push.Role) *nats.Conn {
	t.Helper()
	nc, err := push.Connect(e.url, "test-"+string(r), quiet, push.ClientAuth{Secret: e.sec}.As(r))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func (e *natsEnv) js(t testing.TB, r push.Role) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(e.conn(t, r))
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// presence is a fake device presence.
type presence struct {
	mu sync.Mutex
	on map[uint64][]string
}

func (p *presence) set(uid uint64, devs ...string) {
	p.mu.Lock()
	if p.on == nil {
		p.on = map[uint64][]string{}
	}
	p.on[uid] = devs
	p.mu.Unlock()
}

func (p *presence) Devices(_ context.Context, uid uint64) ([]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.on[uid]), nil
}

// apnsEnv is an APNs stand-in and a client for it.
func apnsEnv(t testing.TB) (*standin.Server, *apns.Client) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srv := standin.APNs(&k.PublicKey, "KEYID00001", "TEAM000001", "com.example.app")
	t.Cleanup(srv.Close)
	hc := srv.Client()
	c, err := apns.New(apns.Config{Key: k, KeyID: "KEYID00001", TeamID: "TEAM000001", Topic: "com.example.app", Endpoint: srv.URL, HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	return srv, c
}

// apnsToken is a well-formed APNs token for (uid, n).
func apnsToken(uid uint64, n int) string { return fmt.Sprintf("%032x%032x", uid, n) }

func waitFor(t testing.TB, d time.Duration, what string, fn func() bool) {
	t.Helper()
	if !standin.Wait(ctxT(t, d), fn) {
		t.Fatalf("timed out waiting for %s", what)
	}
}
