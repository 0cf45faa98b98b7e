package gateway

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"sync"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/secure"
)

// WebSocket access runs on the same event loops and the same port as TCP:
// a connection whose first byte is 'G' (an HTTP GET) is upgraded on the loop
// (gobwas/ws, without net/http), after which every binary WebSocket message
// carries whole longlink frames, exactly as on TCP. The per-connection cost
// is one flag in conn; nothing is buffered while idle.
//
// RFC 6455 handling: client frames must be masked (else close 1002); pings
// are answered with pongs on the loop; a close is echoed; text messages and
// fragmented messages are refused with 1003; a message over the body limit
// with 1009; reserved bits or opcodes with 1002.

// WebSocket close codes (RFC 6455 §7.4.1).
const (
	wsCloseNormal      = 1000
	wsCloseProtocol    = 1002
	wsCloseUnsupported = 1003
	wsClosePolicy      = 1008
	wsCloseTooBig      = 1009
)

// maxUpgradeRequest bounds the HTTP upgrade request (request line + headers).
const maxUpgradeRequest = 8 << 10

var (
	errWSUnmasked    = errors.New("websocket: client frame not masked")
	errWSReserved    = errors.New("websocket: reserved bits or opcode")
	errWSFragmented  = errors.New("websocket: fragmented messages are not supported")
	errWSText        = errors.New("websocket: text messages are not supported; send binary frames")
	errWSTooBig      = errors.New("websocket: message over the size limit")
	errWSBadControl  = errors.New("websocket: control frame too long or fragmented")
	errWSSplitFrames = errors.New("websocket: a longlink frame must not span messages")
)

func wsErrCloseCode(err error) uint16 {
	switch err {
	case errWSFragmented, errWSText:
		return wsCloseUnsupported
	case errWSTooBig:
		return wsCloseTooBig
	}
	return wsCloseProtocol
}

// wsFrame is a parsed client WebSocket frame header.
type wsFrame struct {
	fin    bool
	opcode byte
	mask   [4]byte
	hdrLen int
	length int
}

// parseWSFrame parses a client frame header at the start of b. n == 0 with
// a nil error means more bytes are needed. maxLen bounds the payload.
func parseWSFrame(b []byte, maxLen int) (f wsFrame, err error) {
	if len(b) < 2 {
		return f, nil
	}
	f.fin = b[0]&0x80 != 0
	f.opcode = b[0] & 0x0f
	if b[0]&0x70 != 0 {
		return f, errWSReserved
	}
	if b[1]&0x80 == 0 {
		return f, errWSUnmasked
	}
	l := int(b[1] & 0x7f)
	h := 2
	switch l {
	case 126:
		if len(b) < 4 {
			return f, nil
		}
		l, h = int(binary.BigEndian.Uint16(b[2:4])), 4
	case 127:
		if len(b) < 10 {
			return f, nil
		}
		v := binary.BigEndian.Uint64(b[2:10])
		if v > uint64(maxLen) {
			return f, errWSTooBig
		}
		l, h = int(v), 10
	}
	switch f.opcode {
	case 0x8, 0x9, 0xA:
		if l > 125 || !f.fin {
			return f, errWSBadControl
		}
	case 0x2:
		if !f.fin {
			return f, errWSFragmented
		}
	case 0x0:
		return f, errWSFragmented
	case 0x1:
		return f, errWSText
	default:
		return f, errWSReserved
	}
	if l > maxLen {
		return f, errWSTooBig
	}
	if len(b) < h+4 {
		return f, nil
	}
	copy(f.mask[:], b[h:h+4])
	f.hdrLen, f.length = h+4, l
	return f, nil
}

// unmask XORs p with the mask in place.
func unmask(p []byte, mask [4]byte) {
	for i := range p {
		p[i] ^= mask[i&3]
	}
}

// wsHeader appends the header of an unmasked server frame.
func wsHeader(dst []byte, opcode byte, n int) []byte {
	dst = append(dst, 0x80|opcode)
	switch {
	case n < 126:
		return append(dst, byte(n))
	case n <= 0xffff:
		return append(dst, 126, byte(n>>8), byte(n))
	}
	dst = append(dst, 127)
	return binary.BigEndian.AppendUint64(dst, uint64(n))
}

// wsClose encodes a close frame with a status code and reason.
func wsClose(code uint16, reason string) []byte {
	if len(reason) > 123 {
		reason = reason[:123]
	}
	b := wsHeader(nil, 0x8, 2+len(reason))
	b = binary.BigEndian.AppendUint16(b, code)
	return append(b, reason...)
}

// wsPongs pre-encodes a PONG frame per seq inside a WebSocket binary
// message (10 bytes each), built on the first WebSocket heartbeat.
var (
	wsPongsOnce sync.Once
	wsPongs     []byte
)

const wsPongSize = 2 + codec.HeaderSize

func wsPongFrame(seq uint16) []byte {
	wsPongsOnce.Do(func() {
		b := make([]byte, 0, 65536*wsPongSize)
		for i := 0; i < 65536; i++ {
			b = wsHeader(b, 0x2, codec.HeaderSize)
			b = append(b, pongFrame(uint16(i))...)
		}
		wsPongs = b
	})
	o := int(seq) * wsPongSize
	return wsPongs[o : o+wsPongSize : o+wsPongSize]
}

// upgradeRW feeds gobwas the buffered request and collects its response.
type upgradeRW struct {
	r   io.Reader
	out bytes.Buffer
}

func (u *upgradeRW) Read(p []byte) (int, error)  { return u.r.Read(p) }
func (u *upgradeRW) Write(p []byte) (int, error) { return u.out.Write(p) }

var upgrader = ws.Upgrader{
	ReadBufferSize: maxUpgradeRequest + 1,
	OnRequest: func(uri []byte) error {
		if p, _, _ := bytes.Cut(uri, []byte("?")); !bytes.Equal(p, []byte("/ws")) && !bytes.Equal(p, []byte("/")) {
			return ws.RejectConnectionError(ws.RejectionStatus(404), ws.RejectionReason("no WebSocket endpoint here; use /ws"))
		}
		return nil
	},
}

// upgrade handles an HTTP request on a fresh connection: once the request
// is complete it answers the WebSocket handshake (or an HTTP error) on the
// loop. A request that is not complete yet waits, bounded by the AUTH
// deadline and maxUpgradeRequest.
func (s *Server) upgrade(c *conn, buf []byte) gnet.Action {
	end := bytes.Index(buf, []byte("\r\n\r\n"))
	if end < 0 {
		if len(buf) > maxUpgradeRequest {
			c.closeCode.Store(uint32(codec.CodeProtocol))
			_, _ = c.gc.Write([]byte("HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n"))
			return gnet.Close
		}
		return gnet.None
	}
	req := buf[:end+4]
	rw := &upgradeRW{r: bytes.NewReader(req)}
	_, err := upgrader.Upgrade(rw)
	_, _ = c.gc.Write(rw.out.Bytes())
	if err != nil {
		s.metrics.wsUpgrades.WithLabelValues("rejected").Inc()
		s.connLog.Warn("websocket upgrade refused", "conn", c.id, "remote", s.remote(c), "err", err)
		c.closeCode.Store(uint32(codec.CodeProtocol))
		return gnet.Close
	}
	s.metrics.wsUpgrades.WithLabelValues("ok").Inc()
	c.ws = true
	return s.onWSTraffic(c, buf, len(req))
}

// onWSTraffic handles the bytes of an upgraded connection from buf[off:]
// (buf[:off] is consumed but not yet discarded): whole WebSocket frames are
// unmasked in place and their payloads handled as longlink frames.
func (s *Server) onWSTraffic(c *conn, buf []byte, off int) gnet.Action {
	for off < len(buf) {
		f, err := parseWSFrame(buf[off:], s.cfg.MaxBody+codec.HeaderSize+secure.Overhead) // room for a record; the frame inside is checked against MaxBody
		if err != nil {
			return s.wsFail(c, wsErrCloseCode(err), err.Error())
		}
		if f.hdrLen == 0 || len(buf)-off < f.hdrLen+f.length {
			break // partial
		}
		payload := buf[off+f.hdrLen : off+f.hdrLen+f.length]
		off += f.hdrLen + f.length
		unmask(payload, f.mask)
		switch f.opcode {
		case 0x9: // ping → pong with the same payload
			_, _ = c.gc.Write(append(wsHeader(nil, 0xA, len(payload)), payload...))
		case 0xA: // unsolicited pong: fine
		case 0x8: // close: echo the code, then close
			code := uint16(wsCloseNormal)
			if len(payload) >= 2 {
				code = binary.BigEndian.Uint16(payload)
			}
			_, _ = c.gc.Write(wsClose(code, ""))
			return gnet.Close
		case 0x2:
			n, code := s.frames(c, payload)
			if code != codec.OK {
				return s.closeOnLoop(c, code)
			}
			if n != len(payload) {
				return s.wsFail(c, wsCloseProtocol, errWSSplitFrames.Error())
			}
		}
	}
	if off > 0 {
		_, _ = c.gc.Discard(off)
	}
	s.afterTraffic(c, len(buf)-off, off > 0)
	if c.gc.OutboundBuffered() > s.cfg.MaxOutbound {
		return s.closeOnLoop(c, codec.CodeSlowConsumer)
	}
	return gnet.None
}

// wsFail closes a WebSocket connection for a transport-level violation.
func (s *Server) wsFail(c *conn, code uint16, reason string) gnet.Action {
	s.connLog.Warn("bad websocket frame", "conn", c.id, "remote", s.remote(c), "err", reason)
	c.closeCode.Store(uint32(codec.CodeProtocol))
	_, _ = c.gc.Write(wsClose(code, reason))
	return gnet.Close
}

// wsCloseForCode is the WebSocket close status that accompanies a longlink
// close code: 1008 (policy violation) for "do not reconnect", 1000 otherwise.
// The longlink ERROR frame sent just before carries the precise code.
func wsCloseForCode(code codec.Code) uint16 {
	if !code.Reconnect() {
		return wsClosePolicy
	}
	return wsCloseNormal
}
