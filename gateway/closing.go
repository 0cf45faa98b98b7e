package gateway

import (
	"sync"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/longlink/longlink/heartbeat"
)

// Closing a connection so the client learns why.
//
// The server's closing ERROR is queued behind whatever is already queued to
// the connection, and gnet drops its user-space outbound buffer when it
// closes. So a close never happens while bytes are still queued: the
// connection lingers, reading and ignoring input, until its outbound
// buffer has gone to the kernel; then the server sends FIN (shutdown) and
// waits for the client's, still reading, so the close is never a reset
// that could destroy the ERROR in the client's receive buffer. All of it
// within CloseLinger. Nothing new is queued once the ERROR is: that is the
// room the outbound bound (MaxOutbound) reserves for it.
//
// And a client that half-closes (shutdown(SHUT_WR)) or closes right after
// sending calls still gets their answers: gnet closes the socket on the
// client's FIN, so the server keeps a duplicate descriptor (orphanFD) while
// those calls run and writes their answers to it.

// linger closes c once its outbound bytes are flushed (and FIN answered),
// or when the client has read nothing of them for a second (like frames
// coming in, a drain is judged by progress: one that stalls is cut), or
// after CloseLinger at most; until then it polls each wheel tick. Must run
// on c's loop. While closing, c.rateWin holds the outbound bytes at the
// last progress and c.frames the (low bits of the) tick it was seen.
func (s *Server) linger(c *conn) gnet.Action {
	now := s.wheel.Now()
	ob := c.gc.OutboundBuffered()
	if !c.closing() {
		c.flags.Or(flagClosing)
		c.mark = now + s.lingerTicks
		c.rateWin, c.frames = uint32(ob), uint16(now)
	}
	if int32(now-c.mark) >= 0 {
		return gnet.Close
	}
	if uint32(ob) < c.rateWin {
		c.rateWin, c.frames = uint32(ob), uint16(now)
	} else if ob > 0 && uint32(uint16(now)-c.frames) >= s.finTicks {
		return gnet.Close // the client stopped reading: it will never see the ERROR
	}
	if ob == 0 && c.flags.Load()&flagFinSent == 0 {
		c.flags.Or(flagFinSent)
		if unix.Shutdown(c.gc.Fd(), unix.SHUT_WR) != nil {
			return gnet.Close
		}
		// A client that stays after FIN gets a second at most: refusals in a
		// reconnect storm must not pile up.
		if end := now + s.finTicks; int32(end-c.mark) < 0 {
			c.mark = end
		}
	}
	// Poll next tick (expire wakes it; OnTraffic calls linger again). Remove
	// first: Add writes the entry's owner outside the wheel's lock, which
	// must not race with the wheel reading a still-linked entry.
	s.wheel.Remove(&c.hb)
	s.wheel.Add(&c.hb, c, heartbeat.Never, now+1)
	return gnet.None
}

// orphanFD is a duplicate of a closed connection's socket, kept while the
// calls that were in flight answer.
type orphanFD struct {
	mu sync.Mutex
	fd int
}

// keepForAnswers runs in OnClose when the client closed: with calls in
// flight, keep the socket open for their answers. On c's loop.
func (s *Server) keepForAnswers(c *conn) {
	if c.inflight.Load() == 0 {
		return
	}
	fd, err := c.gc.Dup()
	if err != nil {
		return
	}
	s.orphans.Store(c, &orphanFD{fd: fd})
	c.flags.Or(flagOrphan)
	if c.inflight.Load() == 0 {
		s.releaseOrphan(c) // the last call finished meanwhile
	}
}

// releaseOrphan closes c's kept socket; whoever gets it from the map
// closes it, so exactly once. Goroutine-safe.
func (s *Server) releaseOrphan(c *conn) {
	if v, ok := s.orphans.LoadAndDelete(c); ok {
		v.(*orphanFD).close()
	}
}

// callDone ends one call of c (its answer written or dropped); the last
// one releases an orphaned socket. Goroutine-safe.
func (s *Server) callDone(c *conn) {
	if c.inflight.Add(-1) == 0 && c.orphaned() {
		s.releaseOrphan(c)
	}
}

// orphanWrite writes an answer to c's orphaned socket, if it has one.
// Best effort: the socket is non-blocking, and what does not fit its
// send buffer is lost. Goroutine-safe.
func (s *Server) orphanWrite(c *conn, frame []byte) {
	if !c.orphaned() {
		return
	}
	v, ok := s.orphans.Load(c)
	if !ok {
		return
	}
	o := v.(*orphanFD)
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.fd < 0 {
		return
	}
	if st := c.sec.Load(); st != nil {
		// Encrypted: sealed like every record. The loop no longer writes
		// to a closed connection, and o.mu orders the orphan's writers, so
		// the counters stay in order.
		bb := sealRecord(c, st, frame)
		_, _ = unix.Write(o.fd, bb.B)
		releaseSealed(bb)
		return
	}
	if c.ws {
		_, _ = unix.Write(o.fd, wsHeader(make([]byte, 0, 10), 0x2, len(frame)))
	}
	_, _ = unix.Write(o.fd, frame)
}

func (o *orphanFD) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.fd >= 0 {
		_ = unix.Close(o.fd)
		o.fd = -1
	}
}
