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
	uid     uint64
	device  string
	network pb.Network

	// Owned by the event loop.
	rateWin uint32 // flood window (in seconds of wheel time)
	frames  uint16 // frames seen in rateWin
	partial bool   // a frame is half-received
	ws      bool   // upgraded to WebSocket (set on the loop before AUTH, then static)
	inHello bool   // HELLO is on the handshake pool (secure.go)

	next *conn // sessions chain; guarded by the session shard's mutex

	push *pushSeen // highest PUSH version written per type (push.go); owned by the event loop, nil until the first push

	// Record state once HELLO succeeded (secure.go); set on the loop before
	// the connection can be authenticated, atomic because the wheel may
	// close a connection still in its handshake.
	sec atomic.Pointer[secure.State]

	state     atomic.Uint32
	inflight  atomic.Int32  // calls queued or running
	closeCode atomic.Uint32 // why the server closed it (0: the client did, or I/O failed)
}
