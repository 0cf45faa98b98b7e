package push_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/push"
)

// TestPushServiceRequiresToken: a call without the bearer token, or with
// another, is Unauthenticated; health checks need none.
func TestPushServiceRequiresToken(t *testing.T) {
	h, err := push.StartHub(push.HubConfig{NATSListen: "127.0.0.1:0", GRPCListen: "127.0.0.1:0", PushTokens: []string{"right"}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := push.StartHub(push.HubConfig{NATSListen: "127.0.0.1:0", GRPCListen: "127.0.0.1:0", Logger: quiet}); err == nil {
		t.Fatal("a PushService without tokens started")
	}
	call := func(opts ...grpc.DialOption) error {
		cc, err := grpc.NewClient(h.GRPCAddr(), append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = pb.NewPushServiceClient(cc).Notify(ctx, &pb.NotifyRequest{Uid: 1, Type: 1, Version: 1})
		return err
	}
	if err := call(); status.Code(err) != codes.Unauthenticated {
		t.Errorf("no token: %v", err)
	}
	if err := call(grpc.WithPerRPCCredentials(push.BearerToken("wrong"))); status.Code(err) != codes.Unauthenticated {
		t.Errorf("wrong token: %v", err)
	}
	if err := call(grpc.WithPerRPCCredentials(push.BearerToken("right"))); err != nil {
		t.Errorf("right token: %v", err)
	}
	cc, err := grpc.NewClient(h.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, svc := range []string{"", pb.PushService_ServiceDesc.ServiceName} {
		r, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q: %v %v", svc, r, err)
		}
	}
}

// TestEmbeddedPortConflictNamesAddress: a taken port is an error at once
// that says which address.
func TestEmbeddedPortConflictNamesAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	start := time.Now()
	_, err = push.StartHub(push.HubConfig{NATSListen: ln.Addr().String(), Logger: quiet})
	if err == nil || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("want an error naming %s, got %v", ln.Addr(), err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v to say so", d)
	}
	if _, err := push.StartEmbedded(push.EmbeddedConfig{Listen: "0.0.0.0:0"}); err == nil {
		t.Error("an unauthenticated non-loopback embedded server started")
	}
}

// TestHubStartsDegradedWithoutNATS: with the external NATS down the hub
// starts at once, Ready names the address, and it recovers when NATS comes.
func TestHubStartsDegradedWithoutNATS(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	start := time.Now()
	h, err := push.StartHub(push.HubConfig{NATS: "nats://" + addr, GRPCListen: "127.0.0.1:0", PushTokens: []string{"t"}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	cc, err := grpc.NewClient(h.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	health := func(want healthpb.HealthCheckResponse_ServingStatus) func() error {
		return func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			r, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: pb.PushService_ServiceDesc.ServiceName})
			if err != nil || r.Status != want {
				return fmt.Errorf("health %v %v, want %v", r, err, want)
			}
			return nil
		}
	}
	checkFor(t, 5*time.Second, health(healthpb.HealthCheckResponse_NOT_SERVING))
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("start took %v with NATS down", d)
	}
	if err := h.Ready(); err == nil || !strings.Contains(err.Error(), "nats: disconnected") || !strings.Contains(err.Error(), addr) {
		t.Fatalf("Ready = %v, want nats: disconnected naming %s", err, addr)
	}
	ns, err := push.StartEmbedded(push.EmbeddedConfig{Listen: addr, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	checkFor(t, 10*time.Second, h.Ready)
	checkFor(t, 5*time.Second, health(healthpb.HealthCheckResponse_SERVING))
	checkFor(t, 5*time.Second, func() error { // the router's subscriptions went out on connect
		if ns.NumSubscriptions() < 4 {
			return fmt.Errorf("%d subscriptions", ns.NumSubscriptions())
		}
		return nil
	})
}

// TestJetStreamDiskFullRecovers fills a small tmpfs holding the embedded
// JetStream store: readiness must say so (and the nats-server log must
// reach slog), and once space is freed writes must work again without a
// restart. Needs root to mount; skipped otherwise.
func TestJetStreamDiskFullRecovers(t *testing.T) {
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (%v: %s)", err, strings.TrimSpace(string(out)))
	}
	defer func() { _ = syscall.Unmount(mnt, syscall.MNT_DETACH) }()

	logs := &logCapture{}
	h, sec := authHubAt(t, filepath.Join(mnt, "js"), logs)
	if err := h.Ready(); err != nil {
		t.Fatalf("not ready at start: %v", err)
	}
	nc := connectAs(t, h, sec, push.RoleAdmin, nil)
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "FILL", Subjects: []string{"fill.>"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	// Fill the disk with a file, then publish until JetStream fails.
	filler := filepath.Join(mnt, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			break
		}
	}
	f.Close()
	body := make([]byte, 32<<10)
	failed := false
	for i := 0; i < 2000 && !failed; i++ {
		pctx, pc := context.WithTimeout(ctx, 2*time.Second)
		_, err := js.Publish(pctx, fmt.Sprintf("fill.%d", i), body)
		pc()
		failed = err != nil
		if failed {
			t.Logf("publish %d: %v", i, err)
		}
	}
	if !failed {
		t.Fatal("publishes kept succeeding on a full disk")
	}
	checkFor(t, 10*time.Second, func() error {
		if h.Ready() == nil {
			return errors.New("Ready says ok on a full disk")
		}
		return nil
	})
	t.Logf("not ready: %v", h.Ready())
	if !logs.contains("critical write error") || !logs.contains("component=nats") {
		t.Error("the nats-server log did not reach slog")
	}
	// Free the space: JetStream must come back by itself.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 20*time.Second, h.Ready)
	checkFor(t, 10*time.Second, func() error {
		pctx, pc := context.WithTimeout(ctx, 2*time.Second)
		defer pc()
		_, err := js.Publish(pctx, "fill.after", []byte("x"))
		return err
	})
}

// TestHubProbesExternalJetStream: with an external NATS and something
// relying on JetStream, readiness says when JetStream does not answer.
func TestHubProbesExternalJetStream(t *testing.T) {
	for _, withJS := range []bool{false, true} {
		cfg := push.EmbeddedConfig{Listen: "127.0.0.1:0", Logger: quiet}
		if withJS {
			cfg.JetStreamDir = t.TempDir()
		}
		ns, err := push.StartEmbedded(cfg)
		if err != nil {
			t.Fatal(err)
		}
		h, err := push.StartHub(push.HubConfig{NATS: ns.ClientURL(), JetStreamProbe: true, ProbeEvery: 100 * time.Millisecond, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		checkFor(t, 10*time.Second, func() error {
			err := h.Ready()
			switch {
			case withJS && err != nil:
				return err
			case !withJS && (err == nil || !strings.Contains(err.Error(), "jetstream at")):
				return fmt.Errorf("JetStream off, Ready = %v", err)
			}
			return nil
		})
		h.Close()
		ns.Shutdown()
	}
}

// TestConnectNeedsARole: push.Connect refuses a connection that says
// nothing about its credentials, so no caller can forget them.
func TestConnectNeedsARole(t *testing.T) {
	_, err := push.Connect("nats://127.0.0.1:1", "forgetful", quiet)
	if err == nil || !strings.Contains(err.Error(), "no role") {
		t.Fatalf("Connect without ClientAuth.As: %v", err)
	}
}
