package logic_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/backend/logic"
	"github.com/longlink/longlink/backend/remote"
	"github.com/longlink/longlink/client"
	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/internal/testutil/gatewaytest"
	"github.com/longlink/longlink/proto/pb"
)

// benchGateway starts an in-process gateway in front of be and returns
// conns connected clients (users 1..conns).
func benchGateway(b *testing.B, be backend.Backend, conns int) []*client.Client {
	b.Helper()
	keys, _, err := auth.LoadOrCreate(filepath.Join(b.TempDir(), "keys.json"))
	if err != nil {
		b.Fatal(err)
	}
	srv := gatewaytest.Start(b, gateway.Config{Keys: keys, Backend: be, Loops: 2, MaxFrameRate: 1 << 20})
	var cs []*client.Client
	for i := 0; i < conns; i++ {
		tok, _ := keys.Mint(uint64(i+1), "d", time.Now().Add(time.Hour))
		c, err := client.Dial(context.Background(), client.Options{Addr: srv.Addr(), Token: tok, Device: "d"})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		cs = append(cs, c)
	}
	return cs
}

func openLogic(b *testing.B) *logic.Logic {
	b.Helper()
	l, err := logic.Open(filepath.Join(b.TempDir(), "logic.db"), logic.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	return l
}

// serveGRPC serves be on a loopback port and returns a pool client for it.
func serveGRPC(b *testing.B, be backend.Backend) *remote.Client {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	const secret = "bench-logic-secret-0123456789"
	opts, err := remote.ServerOptions(remote.ServerAuth{Secret: secret})
	if err != nil {
		b.Fatal(err)
	}
	gs := grpc.NewServer(opts...)
	remote.NewServer(be, 0).Register(gs)
	go func() { _ = gs.Serve(ln) }()
	b.Cleanup(gs.Stop)
	c, err := remote.NewClient(remote.Config{Addrs: []string{ln.Addr().String()}, Auth: remote.ClientAuth{Secret: secret}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// runCalls spreads b.N calls of method over the clients, 8 in flight each.
func runCalls(b *testing.B, cs []*client.Client, method string, body func(i int64) []byte) {
	b.Helper()
	var next, failed atomic.Int64
	b.ResetTimer()
	start := time.Now()
	done := make(chan struct{})
	workers := len(cs) * 8
	for w := 0; w < workers; w++ {
		go func(c *client.Client) {
			defer func() { done <- struct{}{} }()
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				if _, err := c.Call(ctx, method, body(i)); err != nil {
					failed.Add(1)
				}
				cancel()
			}
		}(cs[w%len(cs)])
	}
	for w := 0; w < workers; w++ {
		<-done
	}
	b.StopTimer()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d calls failed", n)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "calls/s")
}

func sendBody(n int) func(i int64) []byte {
	return func(i int64) []byte {
		body, _ := proto.Marshal(&pb.SendRequest{To: uint64(i%int64(n)) + 1, Text: "benchmark message", ClientMsgId: fmt.Sprint(i)})
		return body
	}
}

// BenchmarkGatewayEmbeddedSend: msg.send (durable: bbolt commit with fsync,
// concurrent sends coalesced) through a gateway to the embedded logic.
func BenchmarkGatewayEmbeddedSend(b *testing.B) {
	cs := benchGateway(b, openLogic(b), 32)
	runCalls(b, cs, logic.MethodSend, sendBody(32))
}

// BenchmarkGatewayGRPCSend: the same through the gRPC pool to a logic over loopback.
func BenchmarkGatewayGRPCSend(b *testing.B) {
	cs := benchGateway(b, serveGRPC(b, openLogic(b)), 32)
	runCalls(b, cs, logic.MethodSend, sendBody(32))
}

// BenchmarkGatewayEmbeddedProfileGet: a read-only call (no disk write).
func BenchmarkGatewayEmbeddedProfileGet(b *testing.B) {
	cs := benchGateway(b, openLogic(b), 32)
	body, _ := proto.Marshal(&pb.ProfileGetRequest{})
	runCalls(b, cs, logic.MethodProfileGet, func(int64) []byte { return body })
}

// BenchmarkGatewayGRPCProfileGet: the same through gRPC.
func BenchmarkGatewayGRPCProfileGet(b *testing.B) {
	cs := benchGateway(b, serveGRPC(b, openLogic(b)), 32)
	body, _ := proto.Marshal(&pb.ProfileGetRequest{})
	runCalls(b, cs, logic.MethodProfileGet, func(int64) []byte { return body })
}

// BenchmarkSync100Pending: one sync (one page) returning 100 pending
// messages, called directly on the logic.
func BenchmarkSync100Pending(b *testing.B) {
	l := openLogic(b)
	ctx := context.Background()
	for i := 0; i < 100; i++ {
		body, _ := proto.Marshal(&pb.SendRequest{To: 2, Text: fmt.Sprintf("pending message number %d", i)})
		if _, err := l.Call(ctx, &backend.Request{UID: 1, Method: logic.MethodSend, Body: body}); err != nil {
			b.Fatal(err)
		}
	}
	body, _ := proto.Marshal(&pb.SyncRequest{Limit: 100})
	req := &backend.Request{UID: 2, Device: "d", Method: logic.MethodSync, Body: body}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out, err := l.Call(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		if i == 0 {
			var rep pb.SyncReply
			if proto.Unmarshal(out, &rep) != nil || len(rep.Items) != 100 || rep.More {
				b.Fatalf("sync returned %d items, more=%v", len(rep.Items), rep.More)
			}
			b.SetBytes(int64(len(out)))
		}
	}
}

// BenchmarkGatewayGRPCSync100Pending: the same sync through a gateway and gRPC.
func BenchmarkGatewayGRPCSync100Pending(b *testing.B) {
	l := openLogic(b)
	ctx := context.Background()
	for i := 0; i < 100; i++ {
		body, _ := proto.Marshal(&pb.SendRequest{To: 1, Text: fmt.Sprintf("pending message number %d", i)})
		if _, err := l.Call(ctx, &backend.Request{UID: 2, Method: logic.MethodSend, Body: body}); err != nil {
			b.Fatal(err)
		}
	}
	cs := benchGateway(b, serveGRPC(b, l), 1)
	body, _ := proto.Marshal(&pb.SyncRequest{Limit: 100})
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		out, err := cs[0].Call(ctx, logic.MethodSync, body)
		if err != nil {
			b.Fatal(err)
		}
		if i == 0 {
			var rep pb.SyncReply
			if proto.Unmarshal(out, &rep) != nil || len(rep.Items) != 100 {
				b.Fatalf("sync returned %d items", len(rep.Items))
			}
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "syncs/s")
}
