package gateway

import (
	"context"
	"testing"

	"github.com/panjf2000/gnet/v2"

	"github.com/longlink/longlink/push"
)

// benchConn is a gnet.Conn that counts writes; benchLoop runs tasks at once.
type benchConn struct {
	gnet.Conn
	el     gnet.EventLoop
	writes int
	bytes  int
}

func (c *benchConn) Write(b []byte) (int, error) { c.writes++; c.bytes += len(b); return len(b), nil }
func (c *benchConn) OutboundBuffered() int       { return 0 }
func (c *benchConn) EventLoop() gnet.EventLoop   { return c.el }

type benchLoop struct{ gnet.EventLoop }

func (benchLoop) Execute(ctx context.Context, r gnet.Runnable) error { return r.Run(ctx) }

// BenchmarkPushDelivery measures one window: router messages of 100 users
// each parsed and added to the coalescer (two notifies per user and type,
// merged), the flush that groups frames per loop, and the loop task writing
// one frame batch per connection.
func BenchmarkPushDelivery(b *testing.B) {
	const n = 1000
	window, conns := pushWindow(b, n)
	window(1) // grow the tables (both of the coalescer's)
	window(3)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		window(uint64(i*2 + 5))
	}
	b.StopTimer()
	if conns[0].writes != b.N+2 {
		b.Fatalf("writes %d, want one per window (%d)", conns[0].writes, b.N+2)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/delivery")
}

// pushWindow is BenchmarkPushDelivery's set-up: a server with n authed
// connections (users 1 to n) and window(v), one push window: router
// messages of 100 users each parsed and delivered, two notifies per user
// and type (versions v and v+1, merged), the flush that groups frames per
// loop, and the loop task writing one frame batch per connection.
func pushWindow(tb testing.TB, n int) (window func(v uint64), conns []*benchConn) {
	tb.Helper()
	s, err := New(Config{Keys: testKeys, NATS: "nats://unused"})
	if err != nil {
		tb.Fatal(err)
	}
	p := s.push
	el := benchLoop{}
	conns = make([]*benchConn, n)
	for i := range conns {
		conns[i] = &benchConn{el: el}
		c := &conn{gc: conns[i], uid: uint64(i + 1), device: "phone"}
		c.state.Store(stateAuthed)
		s.sessions.add(c)
	}
	payload := []byte("0123456789abcdef")
	uids := make([]uint64, 100)
	var msg []byte
	return func(v uint64) {
		for k := range uint64(2) {
			for g := 0; g < n; g += len(uids) {
				for i := range uids {
					uids[i] = uint64(g + i + 1)
				}
				msg = push.AppendDeliver(msg[:0], push.KindNotify, 1, v+k, 1, "", payload, uids)
				d, err := push.ParseDeliver(msg)
				if err != nil {
					tb.Fatal(err)
				}
				p.Deliver(&d)
			}
		}
		bt := p.co.Take()
		p.flush(bt)
		p.co.Recycle(bt)
	}, conns
}

var _ push.Sink = (*pusher)(nil)
