package gateway

import (
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/longlink/longlink/codec"
)

// fakeConn is the part of gnet.Conn that OnTraffic uses, over a fixed
// inbound buffer; it counts written bytes instead of writing.
type fakeConn struct {
	gnet.Conn
	ctx     any
	in      []byte
	written int
}

func (f *fakeConn) Context() any                { return f.ctx }
func (f *fakeConn) SetContext(c any)            { f.ctx = c }
func (f *fakeConn) Peek(int) ([]byte, error)    { return f.in, nil }
func (f *fakeConn) Discard(n int) (int, error)  { return n, nil }
func (f *fakeConn) Write(b []byte) (int, error) { f.written += len(b); return len(b), nil }
func (f *fakeConn) OutboundBuffered() int       { return 0 }

// BenchmarkHeartbeatOnLoop: one HEARTBEAT through OnTraffic (decode, flood
// check, touch, PONG write), as the event loop runs it. Must be 0 allocs.
func BenchmarkHeartbeatOnLoop(b *testing.B) {
	s, err := New(Config{Keys: testKeys, MaxFrameRate: 1 << 30, Logger: nil})
	if err != nil {
		b.Fatal(err)
	}
	hb := codec.HeaderOnly(codec.CmdHeartbeat, 1)
	fc := &fakeConn{in: hb[:]}
	c := &conn{gc: fc, uid: 1, device: "d"}
	c.state.Store(stateAuthed)
	fc.ctx = c
	s.wheel.Add(&c.hb, c, s.idleTicks(c.network), 1<<31)
	s.cfg.MaxFrameRate = 1 << 15
	b.ReportAllocs()
	for b.Loop() {
		c.frames = 0
		if s.OnTraffic(fc) != gnet.None {
			b.Fatal("closed")
		}
	}
	if fc.written != b.N*codec.HeaderSize {
		b.Fatalf("wrote %d bytes for %d heartbeats", fc.written, b.N)
	}
}

func TestHeartbeatOnLoopZeroAlloc(t *testing.T) {
	s, _ := New(Config{Keys: testKeys, WheelTick: time.Second})
	hb := codec.HeaderOnly(codec.CmdHeartbeat, 1)
	fc := &fakeConn{in: hb[:]}
	c := &conn{gc: fc, uid: 1}
	c.state.Store(stateAuthed)
	fc.ctx = c
	if n := testing.AllocsPerRun(1000, func() { c.frames = 0; s.OnTraffic(fc) }); n != 0 {
		t.Fatalf("heartbeat on the loop allocates %v times", n)
	}
}

// BenchmarkEchoCall: one REQUEST/RESPONSE round trip over loopback TCP
// (submit on the loop, a forwarding goroutine, the answer written back on
// the loop). allocs/op counts the whole process: server, the embedded echo
// (one copy of the body) and the test client.
func BenchmarkEchoCall(b *testing.B) {
	s := startServer(b, func(c *Config) { c.MaxFrameRate = 1 << 30 })
	w := dialWire(b, s.Addr())
	w.auth(token(b, 1, "", time.Hour), "bench")
	req := rawRequest([]byte("echo"), make([]byte, 64))
	frame := codec.AppendFrame(nil, codec.CmdRequest, 0, 1, req)
	buf := make([]byte, 4096)
	b.ReportAllocs()
	for b.Loop() {
		w.send(frame)
		got := 0
		for got < codec.HeaderSize+2+64 {
			n, err := w.c.Read(buf)
			if err != nil {
				b.Fatal(err)
			}
			got += n
		}
	}
}
