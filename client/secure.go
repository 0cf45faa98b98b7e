package client

import (
	"errors"
	"fmt"
	"io"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/secure"
)

// ErrForgedServer: the server could not prove it holds the pinned key (a
// man in the middle, or a wrong pin). The client stops: it never retries in
// plaintext.
var ErrForgedServer = errors.New("longlink: server failed the key check (forged server key or wrong pin)")

func (c *Client) initSecure() error {
	pins := c.opts.ServerKeys
	if c.opts.ServerKey != "" {
		pins = append([]string{c.opts.ServerKey}, pins...)
	}
	if !c.opts.Encrypt {
		if len(pins) > 0 {
			return errors.New("longlink: ServerKey set without Encrypt")
		}
		return nil
	}
	if len(pins) == 0 {
		return errors.New("longlink: Encrypt needs ServerKey or ServerKeys")
	}
	for _, p := range pins {
		k, err := secure.ParsePin(p)
		if err != nil {
			return err
		}
		c.pins = append(c.pins, k)
	}
	if c.opts.Suite == 0 {
		c.opts.Suite = secure.SuiteChaChaPoly
	}
	return nil
}

// preparedHello is a handshake prepared for pin (secure.Prepare): the
// ephemeral key and es of the next connection, computed while the current
// one is up, so a reconnect (after a network change, say, when latency
// matters most) does one X25519 instead of three before its HELLO goes out.
// It is taken once (Swap) and never reused; ~400 B.
type preparedHello struct {
	hs  *secure.ClientHandshake
	pin secure.PinnedKey
}

func (c *Client) prepare(pin secure.PinnedKey) {
	if c.prep.Load() != nil {
		return
	}
	hs, err := secure.Prepare(c.opts.Suite, pin.ID, pin.Public[:], nil)
	if err != nil {
		return // Hello will say why
	}
	c.prep.CompareAndSwap(nil, &preparedHello{hs: hs, pin: pin})
}

// takePrepared returns the prepared handshake if it is for pin, else a new
// one.
func (c *Client) takePrepared(pin secure.PinnedKey) (*secure.ClientHandshake, error) {
	if p := c.prep.Swap(nil); p != nil && p.pin == pin {
		c.prepUsed.Add(1)
		return p.hs, nil
	}
	return secure.Prepare(c.opts.Suite, pin.ID, pin.Public[:], nil)
}

// hello sends the first flight (plaintext AUTH, or HELLO carrying it) and
// returns the reader and the server's answer frame (AUTH_OK or ERROR).
func (c *Client) hello(s *session, auth []byte) (*frameReader, codec.Frame, error) {
	if c.pins == nil {
		if _, err := s.nc.Write(auth); err != nil {
			return nil, codec.Frame{}, err
		}
		r := &frameReader{r: s.nc, buf: make([]byte, 0, 4096)}
		f, err := r.next()
		return r, f, err
	}
	pin := c.pins[int(c.pinIdx.Load())%len(c.pins)]
	var body []byte
	hs, err := c.takePrepared(pin)
	if err == nil {
		body, err = hs.Hello(auth)
	}
	if err != nil {
		return nil, codec.Frame{}, err
	}
	if _, err := s.nc.Write(codec.AppendFrame(nil, codec.CmdHello, codec.FlagEncrypted, 0, body)); err != nil {
		return nil, codec.Frame{}, err
	}
	raw := &frameReader{r: s.nc, buf: make([]byte, 0, 512)}
	f, err := raw.next()
	if err != nil {
		return nil, f, err
	}
	switch {
	case f.Cmd == codec.CmdError || f.Cmd == codec.CmdGoAway: // refused (or draining) before keys existed: plaintext
		sc := serverClose(f)
		if sc.Code == codec.CodeUnknownKey && int(c.pinIdx.Load()) < len(c.pins)-1 {
			c.pinIdx.Add(1) // try the next pinned key on the next attempt
			sc.Code, sc.RetryAfter = codec.CodeBadHandshake, 0
		}
		return nil, f, sc
	case f.Cmd != codec.CmdHelloOK || f.Flags != codec.FlagEncrypted:
		return nil, f, fmt.Errorf("longlink: unexpected %v in answer to HELLO", f.Cmd)
	}
	payload, st, err := hs.Finish(f.Body)
	if err != nil {
		return nil, f, ErrForgedServer
	}
	inner, n, err := codec.Split(payload, codec.MaxBodyLimit)
	if err != nil || n == 0 || n != len(payload) {
		return nil, f, fmt.Errorf("longlink: malformed HELLO_OK payload")
	}
	s.sec = st
	if !c.opts.NoReconnect {
		go c.prepare(pin) // the next connection's ephemeral and es, off this one's path
	}
	// Bytes after HELLO_OK already read into raw's buffer are records.
	rr := &recordReader{r: s.nc, st: st, raw: raw.buf}
	return &frameReader{r: rr, buf: make([]byte, 0, 4096)}, inner, nil
}

// confirm sends the encrypted connection's first record (a HEARTBEAT) and
// waits for its PONG: the server admits the session only once a record
// proves the client holds the keys (a replayed first flight cannot), so
// Connected means the same as after a plaintext AUTH_OK.
func (c *Client) confirm(s *session, r *frameReader) error {
	if s.sec == nil {
		return nil
	}
	if err := s.write(codec.AppendFrame(nil, codec.CmdHeartbeat, 0, 0, nil)); err != nil {
		return err
	}
	for {
		f, err := r.next()
		if err != nil {
			return err
		}
		switch f.Cmd {
		case codec.CmdPong:
			return nil
		case codec.CmdError, codec.CmdGoAway:
			return serverClose(f)
		}
	}
}

// recordReader turns a stream of sealed records into the plaintext frame
// stream they carry. A record that fails authentication ends the
// connection (the server would have sent nothing it cannot seal).
type recordReader struct {
	r     io.Reader
	st    *secure.State
	raw   []byte // received bytes not yet consumed
	plain []byte // opened bytes not yet returned (aliases raw)
	used  int    // raw bytes of the record plain came from
}

func (rr *recordReader) Read(p []byte) (int, error) {
	for len(rr.plain) == 0 {
		if rr.used > 0 {
			rr.raw = rr.raw[:copy(rr.raw, rr.raw[rr.used:])]
			rr.used = 0
		}
		fr, n, err := rr.st.Open(rr.raw, codec.HeaderSize+codec.MaxBodyLimit)
		if err != nil {
			return 0, fmt.Errorf("longlink: %w", err)
		}
		if n > 0 {
			rr.plain, rr.used = fr, n
			break
		}
		if len(rr.raw) == cap(rr.raw) {
			rr.raw = append(rr.raw, make([]byte, max(cap(rr.raw), 4096))...)[:len(rr.raw)]
		}
		m, err := rr.r.Read(rr.raw[len(rr.raw):cap(rr.raw)])
		rr.raw = rr.raw[:len(rr.raw)+m]
		if err != nil && m == 0 {
			return 0, err
		}
	}
	n := copy(p, rr.plain)
	rr.plain = rr.plain[n:]
	return n, nil
}
