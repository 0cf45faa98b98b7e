package gateway

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/push"
)

// startPush runs a push hub (embedded NATS, router, gRPC) and a gateway
// worker connected to it.
func startPush(t *testing.T, mod func(*Config)) (*Server, *push.Hub, pb.PushServiceClient) {
	t.Helper()
	hub, err := push.StartHub(push.HubConfig{NATSListen: "127.0.0.1:0", GRPCListen: "127.0.0.1:0", BroadcastRate: 2,
		PushTokens: []string{"test-push-token"}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hub.Close)
	s := startServer(t, func(c *Config) {
		c.NATS, c.NATSOptions = hub.NATSURL(), []nats.Option{hub.Auth(push.RoleGateway)}
		c.Node = "test-node"
		if mod != nil {
			mod(c)
		}
	})
	cc, err := grpc.NewClient(hub.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(push.BearerToken("test-push-token")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return s, hub, pb.NewPushServiceClient(cc)
}

func waitOnline(t *testing.T, hub *push.Hub, uid uint64, nodes int) {
	t.Helper()
	checkFor(t, 5*time.Second, func() error {
		if n := len(hub.Router().Registry().Lookup(uid, nil)); n != nodes {
			return fmt.Errorf("uid %d on %d nodes, want %d", uid, n, nodes)
		}
		return nil
	})
}

func (w *wire) expectPush(timeout time.Duration) *pb.Push {
	w.t.Helper()
	f := w.expect(codec.CmdPush, timeout)
	var p pb.Push
	if err := proto.Unmarshal(f.Body, &p); err != nil {
		w.t.Fatal(err)
	}
	return &p
}

// expectQuiet fails if a frame arrives within d.
func (w *wire) expectQuiet(d time.Duration) {
	w.t.Helper()
	if f, err := w.next(d); err == nil {
		w.t.Fatalf("unexpected frame %v %x", f.Cmd, f.Body)
	}
}

func TestPushNotifyDeviceMulticastBroadcast(t *testing.T) {
	s, hub, api := startPush(t, nil)
	ctx := context.Background()
	phone, pad := dialWire(t, s.Addr()), dialWire(t, s.Addr())
	phone.auth(token(t, 7, "", time.Hour), "phone")
	pad.auth(token(t, 7, "", time.Hour), "pad")
	other := dialWire(t, s.Addr())
	other.auth(token(t, 8, "", time.Hour), "phone")
	waitOnline(t, hub, 7, 1)
	waitOnline(t, hub, 8, 1)

	rep, err := api.Notify(ctx, &pb.NotifyRequest{Uid: 7, Type: 3, Version: 42, Payload: []byte("hi")})
	if err != nil || rep.Routed != 1 || rep.Nodes != 1 {
		t.Fatalf("notify: %v %v", rep, err)
	}
	for _, w := range []*wire{phone, pad} {
		if p := w.expectPush(2 * time.Second); p.Type != 3 || p.Version != 42 || string(p.Payload) != "hi" {
			t.Fatalf("push %v", p)
		}
	}
	// One device only.
	if _, err := api.Notify(ctx, &pb.NotifyRequest{Uid: 7, Device: "pad", Type: 3, Version: 43}); err != nil {
		t.Fatal(err)
	}
	if p := pad.expectPush(2 * time.Second); p.Version != 43 {
		t.Fatalf("push %v", p)
	}
	// Offline users cost nothing and are reported.
	rep, err = api.Multicast(ctx, &pb.MulticastRequest{Uids: []uint64{7, 8, 9}, Type: 5, Version: 1})
	if err != nil || rep.Routed != 2 || rep.Offline != 1 || rep.Nodes != 1 {
		t.Fatalf("multicast: %v %v", rep, err)
	}
	for _, w := range []*wire{phone, pad, other} {
		if p := w.expectPush(2 * time.Second); p.Type != 5 || p.Version != 1 {
			t.Fatalf("push %v", p)
		}
	}
	phone.expectQuiet(100 * time.Millisecond) // the device notify went to the pad only

	if _, err := api.Broadcast(ctx, &pb.BroadcastRequest{Type: 9, Version: 2}); err != nil {
		t.Fatal(err)
	}
	for _, w := range []*wire{phone, pad, other} {
		if p := w.expectPush(2 * time.Second); p.Type != 9 || p.Version != 2 {
			t.Fatalf("push %v", p)
		}
	}
	// BroadcastRate 2: a burst of 3 more is refused at least once.
	refused := false
	for i := 0; i < 3; i++ {
		_, err := api.Broadcast(ctx, &pb.BroadcastRequest{Type: 9, Version: uint64(3 + i)})
		refused = refused || status.Code(err) == codes.ResourceExhausted
	}
	if !refused {
		t.Fatal("broadcast rate limit never applied")
	}
	if _, err := api.Notify(ctx, &pb.NotifyRequest{Uid: 7, Type: 1, Version: 1, Payload: make([]byte, 1025)}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("oversized payload: %v", err)
	}

	// Closing the connections takes the user out of the registry.
	phone.c.Close()
	pad.c.Close()
	waitOnline(t, hub, 7, 0)
}

func TestPushCoalescesAndNeverGoesBackwards(t *testing.T) {
	s, hub, api := startPush(t, func(c *Config) { c.PushWindow = 300 * time.Millisecond })
	ctx := context.Background()
	w := dialWire(t, s.Addr())
	w.auth(token(t, 11, "", time.Hour), "phone")
	waitOnline(t, hub, 11, 1)
	// A burst within one window: one frame per type, with the highest version.
	for v := uint64(1); v <= 20; v++ {
		for _, typ := range []uint32{1, 2} {
			if _, err := api.Notify(ctx, &pb.NotifyRequest{Uid: 11, Type: typ, Version: v, Payload: []byte{byte(v)}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	got := map[uint32]uint64{}
	for range 2 {
		p := w.expectPush(2 * time.Second)
		got[p.Type] = p.Version
		if p.Payload[0] != byte(p.Version) {
			t.Fatalf("payload of another version: %v", p)
		}
	}
	if got[1] != 20 || got[2] != 20 {
		t.Fatalf("coalesced pushes %v, want version 20 of types 1 and 2", got)
	}
	w.expectQuiet(400 * time.Millisecond)
	// An older version arriving later is not written.
	if _, err := api.Notify(ctx, &pb.NotifyRequest{Uid: 11, Type: 1, Version: 7}); err != nil {
		t.Fatal(err)
	}
	w.expectQuiet(500 * time.Millisecond)
	if _, err := api.Notify(ctx, &pb.NotifyRequest{Uid: 11, Type: 1, Version: 21}); err != nil {
		t.Fatal(err)
	}
	if p := w.expectPush(2 * time.Second); p.Version != 21 {
		t.Fatalf("push %v", p)
	}
}

func TestPushSlowConsumerIsClosed(t *testing.T) {
	s, hub, api := startPush(t, func(c *Config) { c.MaxOutbound = 64 << 10; c.PushWindow = 5 * time.Millisecond })
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.(*net.TCPConn).SetReadBuffer(4096)
	w := &wire{t: t, c: c}
	w.auth(token(t, 12, "", time.Hour), "phone")
	waitOnline(t, hub, 12, 1)
	payload := make([]byte, 1024)
	ctx := context.Background()
	// The client reads nothing; distinct types so coalescing cannot help.
	checkFor(t, 20*time.Second, func() error {
		for typ := uint32(1); typ <= 64; typ++ {
			_, _ = api.Notify(ctx, &pb.NotifyRequest{Uid: 12, Type: typ, Version: uint64(time.Now().UnixNano()), Payload: payload})
		}
		if v := closesByReason(s, "slow_consumer"); v < 1 {
			return fmt.Errorf("not closed yet")
		}
		return nil
	})
	waitOnline(t, hub, 12, 0)
}

func closesByReason(s *Server, reason string) float64 {
	fams, _ := s.metrics.reg.Gather()
	for _, f := range fams {
		if f.GetName() != "longlink_closes_total" {
			continue
		}
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
