package loadtest

import (
	"errors"
	"path/filepath"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/secure"
)

// --encrypt: the client side of docs/protocol.md "Encryption" on the
// tool's epoll engine. Per connection it keeps two pointers; during the
// handshake a secure.ClientHandshake (~400 B, for one round trip), after it a
// secure.State (80 bytes), and in the reconnect scenario also the next
// connection's prepared handshake (prepareNext).

func (c *Config) normalizeEncrypt() error {
	if !c.Encrypt {
		return nil
	}
	if c.WS {
		return errors.New("--encrypt with --ws is not supported yet")
	}
	if c.ServerKey == "" {
		ring, err := secure.LoadKeyRing(filepath.Join(filepath.Dir(c.Keys), "server-keys.json"))
		if err != nil {
			return errors.New("--encrypt needs --server-key (or a readable server-keys.json next to --keys): " + err.Error())
		}
		c.ServerKey = ring.Active().String()
	}
	_, err := secure.ParsePin(c.ServerKey)
	return err
}

// helloFrame wraps the AUTH frame in a HELLO for connection i, with the
// handshake prepared for it if there is one (one X25519 left), else a new
// one (three).
func (e *engine) helloFrame(i int, auth []byte) []byte {
	c := &e.conns[i]
	var body []byte
	err := secure.ErrUsed
	if c.hs != nil {
		if body, err = c.hs.Hello(auth); err == nil {
			e.extra["encrypt_prepared_hellos"]++
		}
	}
	if err != nil {
		c.hs, body, err = secure.Hello(secure.SuiteChaChaPoly, e.pin.ID, e.pin.Public[:], auth, nil)
	}
	if err != nil {
		c.hs = nil
		e.fail(i, "encrypt:hello")
		return nil
	}
	return codec.AppendFrame(nil, codec.CmdHello, codec.FlagEncrypted, 0, body)
}

// prepareNext prepares connection i's next handshake (secure.Prepare: its
// ephemeral key and es), as a client that expects to reconnect does while
// idle: the reconnect scenario's connections, after the ramp's connects and
// after the storm (not during it: a real client's CPU is its own, the
// tool's is the gateway host's). ~400 B per connection until used.
func (e *engine) prepareNext(i int) {
	c := &e.conns[i]
	if !e.spec.Encrypt || c.sec == nil || c.hs != nil {
		return
	}
	hs, err := secure.Prepare(secure.SuiteChaChaPoly, e.pin.ID, e.pin.Public[:], nil)
	if err != nil {
		e.errorf("encrypt:prepare")
		return
	}
	c.hs = hs
}

// parseSealed is parse for an encrypted connection: HELLO_OK (or a
// plaintext ERROR) first, then records, each opened in place.
func (e *engine) parseSealed(i int, data []byte) (int, bool) {
	c := &e.conns[i]
	off := 0
	if c.sec == nil { // the handshake: c.hs is in flight
		f, n, err := codec.Split(data, codec.MaxBodyLimit)
		if err != nil {
			e.errorf("protocol:" + err.Error())
			e.closed(i, "protocol")
			return 0, false
		}
		if n == 0 {
			return 0, true
		}
		off = n
		switch f.Cmd {
		case codec.CmdError: // refused before the keys existed; the close follows
			return off, e.frame(i, f)
		case codec.CmdHelloOK:
		default:
			e.errorf("encrypt:unexpected_" + f.Cmd.String())
			e.closed(i, "protocol")
			return off, false
		}
		payload, st, err := c.hs.Finish(f.Body)
		c.hs = nil
		if err != nil {
			e.errorf("encrypt:forged_server")
			e.closed(i, "protocol")
			return off, false
		}
		c.sec = st
		inner, m, err := codec.Split(payload, codec.MaxBodyLimit)
		if err != nil || m == 0 || m != len(payload) {
			e.errorf("encrypt:bad_hello_ok")
			e.closed(i, "protocol")
			return off, false
		}
		// The first record confirms the keys; the server admits the
		// session then. Its PONG is ignored (no heartbeat outstanding).
		hb := codec.HeaderOnly(codec.CmdHeartbeat, 0)
		if !e.write(i, hb[:]) || !e.frame(i, inner) || c.fd <= 0 {
			return off, false
		}
	}
	for off < len(data) {
		plain, n, err := c.sec.Open(data[off:], codec.HeaderSize+codec.MaxBodyLimit)
		if err != nil {
			e.errorf("encrypt:" + err.Error())
			e.closed(i, "protocol")
			return off, false
		}
		if n == 0 {
			break
		}
		off += n
		for p := 0; p < len(plain); {
			f, m, err := codec.Split(plain[p:], codec.MaxBodyLimit)
			if err != nil || m == 0 {
				e.errorf("encrypt:frame_across_records")
				e.closed(i, "protocol")
				return off, false
			}
			p += m
			if !e.frame(i, f) || c.fd <= 0 {
				return off, false
			}
		}
	}
	return off, true
}
