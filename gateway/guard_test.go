package gateway

import (
	"testing"
	"unsafe"

	"github.com/panjf2000/gnet/v2"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/heartbeat"
	"github.com/longlink/longlink/shake"
)

// Guards for figures in README.md, docs/measurements.md and
// ARCHITECTURE.md that do not depend on the machine: allocations per
// operation on the hot paths and bytes per connection of the structs the
// gateway keeps per connection. Timing stays in the benchmarks.

// TestGuardHeartbeatOnLoopZeroAllocs: a HEARTBEAT through OnTraffic with
// the connection in the timing wheel (decode, flood check, touch, PONG
// write), as BenchmarkHeartbeatOnLoop runs it: 0 allocs.
func TestGuardHeartbeatOnLoopZeroAllocs(t *testing.T) {
	s, err := New(Config{Keys: testKeys, MaxFrameRate: 1 << 15})
	if err != nil {
		t.Fatal(err)
	}
	hb := codec.HeaderOnly(codec.CmdHeartbeat, 1)
	two := append(hb[:], hb[:]...) // two frames in one read
	for _, in := range [][]byte{hb[:], two} {
		fc := &fakeConn{in: in}
		c := &conn{gc: fc, uid: 1, device: "d"}
		c.state.Store(stateAuthed)
		fc.ctx = c
		s.wheel.Add(&c.hb, c, s.idleTicks(c.network), 1<<31)
		if n := testing.AllocsPerRun(1000, func() {
			c.frames = 0
			if s.OnTraffic(fc) != gnet.None {
				panic("closed")
			}
		}); n != 0 {
			t.Errorf("%d heartbeat(s) per read allocate %v times, want 0", len(in)/codec.HeaderSize, n)
		}
		if fc.written == 0 {
			t.Fatal("no PONG written")
		}
	}
}

// TestGuardPushDeliveryZeroAllocs: a push window as BenchmarkPushDelivery
// runs it (router messages parsed, coalesced, flushed per loop, one frame
// batch encoded and written per connection): 0 allocs once the tables have
// grown.
func TestGuardPushDeliveryZeroAllocs(t *testing.T) {
	const n = 300
	deliver, conns := pushWindow(t, n)
	v := uint64(1)
	window := func() {
		deliver(v)
		v += 2
	}
	window()
	window()
	before := conns[0].writes
	if a := testing.AllocsPerRun(100, window); a != 0 {
		t.Errorf("a push window of %d deliveries allocates %v times, want 0", 2*n, a)
	}
	if conns[0].writes <= before {
		t.Fatal("nothing delivered")
	}
}

// Size classes of Go's allocator up to 512 bytes: a struct of n bytes
// costs the next class.
var sizeClasses = []uintptr{8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 288, 320, 352, 384, 416, 448, 480, 512}

func allocSize(n uintptr) uintptr {
	for _, c := range sizeClasses {
		if n <= c {
			return c
		}
	}
	return n
}

// TestGuardBytesPerConnection: ARCHITECTURE.md leaves the gateway about
// 350 bytes per connection of its own on top of gnet's ~655 (session entry,
// timing-wheel slot, auth and heartbeat state) to stay within the README's
// 1 KiB. What the gateway allocates per authenticated connection: the conn
// (with its embedded wheel entry) at its size class, the sessions map slot
// (key, pointer, and the swiss table's control byte and load factor:
// measured 40 B), the device id (a typical one, 16 B), and the push-version
// record once the connection got a push.
func TestGuardBytesPerConnection(t *testing.T) {
	const budget = 350
	const sessionSlot = 40 // measured (docs/measurements.md: "session entry 40 B")
	const deviceID = 16
	connSize := unsafe.Sizeof(conn{})
	seen := unsafe.Sizeof(pushSeen{})
	total := allocSize(connSize) + sessionSlot + allocSize(deviceID) + allocSize(seen)
	t.Logf("conn %d B (class %d), pushSeen %d B, wheel entry %d B: %d B per connection of %d", connSize, allocSize(connSize), seen,
		unsafe.Sizeof(heartbeat.Entry[conn]{}), total, budget)
	if total > budget {
		t.Errorf("the gateway's own state is %d B per connection, over the %d B budget (conn %d B, pushSeen %d B)", total, budget, connSize, seen)
	}
	if e := unsafe.Sizeof(heartbeat.Entry[conn]{}); e > 40 {
		t.Errorf("wheel entry %d B, docs say 40 B", e)
	}
	// The idle deadline is embedded, not a separate allocation.
	if unsafe.Offsetof(conn{}.hb) != 0 || unsafe.Sizeof(conn{}.hb) != unsafe.Sizeof(heartbeat.Entry[conn]{}) {
		t.Error("the wheel entry is no longer embedded at the start of conn")
	}
}

// TestGuardShakeTicketReplyZeroAllocs: docs/shake.md's "ticket reply on the
// loop (dispense, seal, SHAKE_RESP encoding), 0 allocs".
func TestGuardShakeTicketReplyZeroAllocs(t *testing.T) {
	s, _, _ := shakeLoopServer(t)
	s.shake.cfg.Issuer.RefillForBenchmark() // every ticket of the slot available
	buf := make([]byte, 0, 128)
	if n := testing.AllocsPerRun(1000, func() {
		if buf = s.shake.appendShakeRsp(buf[:0], 1, 1); len(buf) < shake.SealedSize {
			panic("no ticket")
		}
	}); n != 0 {
		t.Errorf("a ticket reply allocates %v times, want 0", n)
	}
}
