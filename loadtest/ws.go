package loadtest

import (
	"bytes"
	"encoding/binary"
	"strconv"

	"github.com/longlink/longlink/codec"
)

// WebSocket mode (--ws): each connection sends an HTTP upgrade (GET /ws) on
// the gateway's port before AUTH; after the 101 every longlink frame goes in
// its own masked binary WebSocket message, and the server's binary messages
// are unwrapped into frames (a message may carry several). Server pings are
// answered with pongs. Nothing is kept per connection beyond the state byte:
// the handshake uses one fixed key (the server's answer is still checked),
// and masking is done into one scratch buffer per worker.

// wsKey is the Sec-WebSocket-Key every connection sends, and wsAccept the
// answer RFC 6455 §1.3 requires for it.
const (
	wsKey    = "dGhlIHNhbXBsZSBub25jZQ=="
	wsAccept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
	// maxUpgradeResponse bounds the server's handshake response.
	maxUpgradeResponse = 8 << 10
)

// WebSocket opcodes.
const (
	wsOpBinary = 0x2
	wsOpText   = 0x1
	wsOpClose  = 0x8
	wsOpPing   = 0x9
	wsOpPong   = 0xA
)

func (e *engine) upgradeRequest() []byte {
	host := e.spec.Target
	e.scratch = append(e.scratch[:0], "GET /ws HTTP/1.1\r\nHost: "...)
	e.scratch = append(e.scratch, host...)
	e.scratch = append(e.scratch, "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "+wsKey+
		"\r\nSec-WebSocket-Version: 13\r\n\r\n"...)
	return e.scratch
}

// wsWrap returns payload as one masked client message with opcode op, in the
// worker's scratch buffer (valid until the next call).
func (e *engine) wsWrap(op byte, payload []byte) []byte {
	b := e.wsOut[:0]
	b = append(b, 0x80|op)
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xFFFF:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	// xorshift64: a fresh masking key per message, no system call.
	e.rng ^= e.rng << 13
	e.rng ^= e.rng >> 7
	e.rng ^= e.rng << 17
	var mask [4]byte
	binary.LittleEndian.PutUint32(mask[:], uint32(e.rng))
	b = append(b, mask[:]...)
	start := len(b)
	b = append(b, payload...)
	for k := range payload {
		b[start+k] ^= mask[k&3]
	}
	e.wsOut = b
	return b
}

// parseUpgrade consumes the server's handshake response from data. It
// returns how many bytes it consumed (0: incomplete) and false if the
// connection was closed.
func (e *engine) parseUpgrade(i int, data []byte) (int, bool) {
	c := &e.conns[i]
	end := bytes.Index(data, []byte("\r\n\r\n"))
	if end < 0 {
		if len(data) > maxUpgradeResponse {
			e.fail(i, "ws:upgrade:too_long")
			return len(data), false
		}
		return 0, true
	}
	resp := data[:end+4]
	status := "bad_response"
	if len(resp) >= 12 && bytes.HasPrefix(resp, []byte("HTTP/1.1 ")) {
		status = string(resp[9:12])
	}
	if status != "101" {
		e.fail(i, "ws:upgrade:"+status)
		return len(resp), false
	}
	if !bytes.Contains(resp, []byte(wsAccept)) {
		e.fail(i, "ws:upgrade:bad_accept")
		return len(resp), false
	}
	e.record("upgrade", c.t0)
	e.extra["ws_upgraded"]++
	c.state = stAuthing
	c.t0 = e.now
	if !e.write(i, e.authFrame(i)) {
		return len(resp), false
	}
	return len(resp), c.fd > 0
}

// parseWS consumes whole server WebSocket messages from data and handles
// the longlink frames inside. It returns how many bytes it consumed and
// false if the connection was closed.
func (e *engine) parseWS(i int, data []byte) (int, bool) {
	c := &e.conns[i]
	off := 0
	if c.state == stUpgrading {
		n, alive := e.parseUpgrade(i, data)
		if !alive || n == 0 {
			return n, alive
		}
		off = n
	}
	for off < len(data) {
		b := data[off:]
		if len(b) < 2 {
			break
		}
		fin, op := b[0]&0x80 != 0, b[0]&0x0f
		if b[0]&0x70 != 0 || b[1]&0x80 != 0 {
			return off, e.wsProtocol(i, "reserved_or_masked")
		}
		n, h := int(b[1]&0x7f), 2
		switch n {
		case 126:
			if len(b) < 4 {
				return off, true
			}
			n, h = int(binary.BigEndian.Uint16(b[2:4])), 4
		case 127:
			if len(b) < 10 {
				return off, true
			}
			v := binary.BigEndian.Uint64(b[2:10])
			if v > uint64(codec.MaxBodyLimit+codec.HeaderSize) {
				return off, e.wsProtocol(i, "too_big")
			}
			n, h = int(v), 10
		}
		if len(b) < h+n {
			break
		}
		payload := b[h : h+n]
		off += h + n
		if !fin {
			return off, e.wsProtocol(i, "fragmented")
		}
		switch op {
		case wsOpBinary:
			e.extra["ws_messages"]++
			for p := payload; len(p) > 0; {
				f, k, err := codec.Split(p, codec.MaxBodyLimit)
				if err != nil || k == 0 {
					return off, e.wsProtocol(i, "split_frame")
				}
				p = p[k:]
				if !e.frame(i, f) || c.fd <= 0 {
					return off, false
				}
			}
		case wsOpPing:
			e.extra["ws_pings"]++
			if !e.writeRaw(i, e.wsWrap(wsOpPong, payload)) {
				return off, false
			}
		case wsOpPong:
		case wsOpClose:
			code := 0
			if len(payload) >= 2 {
				code = int(binary.BigEndian.Uint16(payload))
			}
			e.errorf("ws:close:" + strconv.Itoa(code))
			// The server closes the TCP connection next; the reason
			// recorded then is the longlink code of a preceding ERROR.
		default:
			return off, e.wsProtocol(i, "opcode_"+strconv.Itoa(int(op)))
		}
	}
	return off, true
}

func (e *engine) wsProtocol(i int, what string) bool {
	e.errorf("protocol:ws_" + what)
	e.closed(i, "protocol")
	return false
}
