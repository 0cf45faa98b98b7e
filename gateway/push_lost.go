package gateway

import (
	"errors"
	"io"

	"github.com/longlink/longlink/push"
)

// Lost pushes (Config.PushLost, on with the offline path): a connection
// that closes with PUSH frames its client may never have received reports
// the newest version per type of those to the router (push.Node.Lost),
// which queues them for that device's offline notification; the device
// query at send time cancels them if the device came back within the delay.
//
// Which pushes: the client never acknowledges a PUSH, so the gateway judges
// by what it already has, without a byte more per connection (pushSeen's
// dirty bits and tick live in what was its padding):
//
//   - a type's newest write is unconfirmed (dirty) until the client has been
//     heard from (any frame: heartbeat, call) at least a second after the
//     newest unconfirmed write while nothing was left in the connection's
//     user-space outbound buffer: that later segment carried the TCP
//     acknowledgement of the bytes before it. Checked lazily, at the next
//     push to the connection and at its close (confirm), so the heartbeat
//     path is unchanged.
//   - at close, unconfirmed types are reported if the socket still holds
//     bytes the client's TCP has not acknowledged (gnet's outbound buffer,
//     or the kernel's send queue, SIOCOUTQ: a dead link, a slow consumer cut
//     off, a stale connection), or if the connection was reset (the kernel
//     discarded its queue, so nobody can tell: a duplicate notification is
//     better than none). A clean close whose bytes all were acknowledged
//     reports nothing.
//
// Cost: on the loop's push write, when on, one atomic load and compare per
// connection written; at close, one ioctl for a connection with unconfirmed
// pushes; one small NATS message (batched) per such connection.

// dirtyMore is pushSeen.dirty's bit for the types in pushSeen.more.
const dirtyMore = 1 << 7

// confirm clears c's dirty bits once the client has been heard from well
// after the newest of those writes (see above). On c's loop.
func (p *pusher) confirm(c *conn) {
	ps := c.push
	if ps.dirty != 0 && int32(c.hb.LastTouch()-ps.at) > int32(p.s.secTicks) && c.gc.OutboundBuffered() == 0 {
		ps.dirty = 0
	}
}

// lost runs in OnClose for an authenticated connection (on its loop, before
// gnet closes the socket).
func (p *pusher) lost(c *conn, err error) {
	if p == nil || p.node == nil || !p.s.cfg.PushLost || c.push == nil || c.push.dirty == 0 {
		return
	}
	if !c.closing() { // a lingering connection's wheel entry was re-added: its last touch is the close's
		p.confirm(c)
	}
	ps := c.push
	if ps.dirty == 0 {
		return
	}
	reset := err != nil && !errors.Is(err, io.EOF)
	if !reset && c.gc.OutboundBuffered() == 0 {
		q := sendQueued(c.gc.Fd())
		if c.flags.Load()&flagFinSent != 0 {
			q-- // our FIN takes a sequence number
		}
		if q <= 0 {
			return // everything reached the client's TCP
		}
	}
	var buf [8]push.LostPush
	out := buf[:0]
	for i := range int(ps.n) {
		if ps.dirty&(1<<i) != 0 {
			out = append(out, push.LostPush{Type: ps.typ[i], Version: ps.ver[i]})
		}
	}
	if ps.dirty&dirtyMore != 0 {
		for t, v := range ps.more { // all of them: which are unconfirmed is not recorded
			if len(out) == push.MaxLostTypes {
				break
			}
			out = append(out, push.LostPush{Type: t, Version: v})
		}
	}
	ps.dirty = 0
	p.lostN.Add(float64(len(out)))
	p.node.Lost(c.uid, c.device, out)
}
