package gateway

import (
	"sync/atomic"

	"github.com/panjf2000/gnet/v2"

	"github.com/longlink/longlink/heartbeat"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/secure"
)

// Connection states.
const (
	stateNew    uint32 = iota // waiting for AUTH
	stateAuthed               // AUTH_OK sent; in the session table
	stateClosed               // close requested
)

// conn is the whole per-connection state: one small struct, no goroutine, no
// buffer. Fields are grouped by owner.
type conn struct {
	hb heartbeat.Entry[conn] // the idle deadline; see heartbeat.Wheel for its locking

	// Static after OnOpen.
	gc gnet.Conn
	id uint64

	// Written on the event loop before state becomes stateAuthed, then static;
	// read by workers only after they see stateAuthed.
	uid    uint64
	device string // network is below, with the other 4-byte fields

	next *conn // sessions chain; guarded by the session shard's mutex

	push *pushSeen // highest PUSH version written per type (push.go); owned by the event loop, nil until the first push

	// Record state once HELLO succeeded (secure.go); set on the loop before
	// the connection can be authenticated, atomic because the wheel may
	// close a connection still in its handshake.
	sec atomic.Pointer[secure.State]

	// The 4-byte fields and the bytes together, so the struct stays in the
	// 144-byte size class (TestEncryptedConnBytes).
	network pb.Network

	// Owned by the event loop.
	rateWin uint32 // flood window (in seconds of wheel time); closing: see linger
	frames  uint16 // frames seen in rateWin; closing: see linger
	ws      bool   // upgraded to WebSocket (set on the loop before AUTH, then static)
	inHello bool   // HELLO is on the handshake pool (secure.go)
	// mark: while a frame is half-received, how many of its bytes were
	// buffered when its current progress window began (afterTraffic); once
	// closing, the wheel tick at which lingering ends.
	mark uint32

	flags atomic.Uint32 // flagPartial (written on the loop, read by the wheel's expire), flagOrphan, flagClosing, flagFinSent

	state     atomic.Uint32
	inflight  atomic.Int32  // calls (REQUEST, OPEN) queued, running or with their answer not yet written
	closeCode atomic.Uint32 // why the server closed it (0: the client did, or I/O failed)
}

// conn.flags bits.
const (
	flagPartial     uint32 = 1 << iota // a frame is half-received
	flagOrphan                         // closed by the client with calls in flight: Server.orphans has its socket
	flagFinSent                        // closing: everything is flushed and FIN sent; waiting for the client's
	flagClosing                        // the closing ERROR is queued: input is ignored, close once it is flushed (linger); set on the loop
	flagProxyHeader                    // from a balancer network: the stream must start with a PROXY header, not yet read (proxyproto.go); loop only
)

func (c *conn) closing() bool { return c.flags.Load()&flagClosing != 0 }

func (c *conn) partial() bool { return c.flags.Load()&flagPartial != 0 }

func (c *conn) setPartial(on bool) {
	if on {
		c.flags.Or(flagPartial)
	} else {
		c.flags.And(^flagPartial)
	}
}

func (c *conn) orphaned() bool { return c.flags.Load()&flagOrphan != 0 }
