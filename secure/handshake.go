package secure

import (
	"encoding/binary"
	"errors"
	"io"
)

func validSuite(s uint8) bool { return s == SuiteChaChaPoly || s == SuiteAESGCM }

// helloPrologue is the Noise prologue: "longlink/1 " then the HELLO prefix.
func helloPrologue(prefix []byte) []byte {
	return append([]byte(prologue), prefix[:HelloPrefix]...)
}

// ClientHandshake is a client's handshake from Prepare (or Hello) to
// Finish. It serves exactly one connection.
type ClientHandshake struct {
	sym    symmetric
	e      ephemeral
	prefix [HelloPrefix]byte
	stage  uint8 // prepared, sent (message 1 written), done
}

const (
	stagePrepared = iota
	stageSent
	stageDone
)

// Hello starts a handshake with the server key serverPub (id keyID) and
// returns the HELLO body: version, suite, key id, then Noise NK message 1
// (e, es) carrying payload, which must be the AUTH frame. rng nil means
// crypto/rand (tests pass a fixed one for the test vectors). It is Prepare
// then (*ClientHandshake).Hello.
func Hello(suite uint8, keyID uint32, serverPub []byte, payload []byte, rng io.Reader) (*ClientHandshake, []byte, error) {
	c, err := Prepare(suite, keyID, serverPub, rng)
	if err != nil {
		return nil, nil, err
	}
	body, err := c.Hello(payload)
	if err != nil {
		return nil, nil, err
	}
	return c, body, nil
}

// Prepare does, ahead of a connection, the part of a client handshake that
// needs no payload: the ephemeral key pair and es = DH(e, rs), two of the
// client's three X25519 operations, so a client that knows it will
// reconnect (to a server key it pins) leaves one (ee, in Finish) for connect
// time. This is Noise NK's own order: message 1 is "e, es" and only then
// EncryptAndHash(payload), and every step before it (InitializeSymmetric,
// the prologue, MixHash(rs), MixHash(e), MixKey(es)) depends only on the
// suite, the key id and the server key. The result serves one handshake:
// Hello refuses a second call, so the ephemeral is never used twice. Keep
// it no longer than the ephemeral may live (until the reconnect).
func Prepare(suite uint8, keyID uint32, serverPub []byte, rng io.Reader) (*ClientHandshake, error) {
	if !validSuite(suite) {
		return nil, ErrBadSuite
	}
	if len(serverPub) != DHLen {
		return nil, ErrBadHello
	}
	e, err := newEphemeral(rng)
	if err != nil {
		return nil, err
	}
	c := &ClientHandshake{e: e}
	c.prefix[0], c.prefix[1] = HelloVersion, suite
	binary.BigEndian.PutUint32(c.prefix[2:6], keyID)
	c.sym.init(suite, c.prefix[:], serverPub)
	c.sym.mixHash(c.e.pub[:])
	es, err := c.e.dh(serverPub)
	if err != nil {
		return nil, ErrBadHello // a low-order "server key"
	}
	c.sym.mixKey(es[:])
	return c, nil
}

// KeyID returns the server key id the handshake was prepared for.
func (c *ClientHandshake) KeyID() uint32 { return binary.BigEndian.Uint32(c.prefix[2:6]) }

// ErrUsed: a prepared handshake was asked for a second HELLO.
var ErrUsed = errors.New("secure: a handshake serves one connection (prepare another)")

// Hello returns the HELLO body of a prepared handshake, message 1 carrying
// payload (the AUTH frame). It may be called once.
func (c *ClientHandshake) Hello(payload []byte) ([]byte, error) {
	if c.stage != stagePrepared {
		return nil, ErrUsed
	}
	c.stage = stageSent
	body := make([]byte, 0, HelloPrefix+DHLen+len(payload)+TagSize)
	body = append(body, c.prefix[:]...)
	body = append(body, c.e.pub[:]...)
	return c.sym.encryptAndHash(body, payload)
}

// Finish reads the HELLO_OK body (Noise message 2: e, ee) and returns its
// payload (the AUTH_OK or ERROR frame) and the record state. A server that
// does not hold the pinned private key cannot produce a message 2 that
// decrypts: that is ErrForgedKey.
func (c *ClientHandshake) Finish(helloOK []byte) (payload []byte, st *State, err error) {
	if len(helloOK) < DHLen+TagSize || c.stage != stageSent {
		return nil, nil, ErrBadHello
	}
	c.stage = stageDone
	defer func() { c.e = ephemeral{} }() // used once
	re := helloOK[:DHLen]
	c.sym.mixHash(re)
	ee, err := c.e.dh(re)
	if err != nil {
		return nil, nil, ErrForgedKey
	}
	c.sym.mixKey(ee[:])
	payload, err = c.sym.decryptAndHash(helloOK[DHLen:])
	if err != nil {
		return nil, nil, ErrForgedKey
	}
	send, recv := c.sym.split()
	st, err = newState(c.suite(), send, recv)
	return payload, st, err
}

func (c *ClientHandshake) suite() uint8 { return c.sym.suite }

// ServerHandshake is the server's side between reading HELLO and writing
// HELLO_OK (one short-lived object per handshake, dropped after Finish).
type ServerHandshake struct {
	sym   symmetric
	re    [32]byte
	rng   io.Reader
	keyID uint32
}

// KeyID returns the server key the client named.
func (h *ServerHandshake) KeyID() uint32 { return h.keyID }

// Suite returns the suite the client chose.
func (h *ServerHandshake) Suite() uint8 { return h.sym.suite }

// Accept parses a HELLO body, looks up the key it names and reads Noise
// message 1 (one X25519); it returns the client's first-flight payload (the
// AUTH frame, still to be validated by the caller). rng is for the server's
// ephemeral key in Finish: nil takes a pre-generated one (Pregenerate) or
// makes one from crypto/rand. Errors: ErrBadHello, ErrBadSuite,
// ErrUnknownKey, ErrHandshake (message 1 did not decrypt).
func (r *KeyRing) Accept(hello []byte, rng io.Reader) (*ServerHandshake, []byte, error) {
	suite, keyID, msg, err := ParseHello(hello)
	if err != nil {
		return nil, nil, err
	}
	k, ok := r.keys[keyID]
	if !ok {
		return nil, nil, ErrUnknownKey
	}
	h := &ServerHandshake{rng: rng, keyID: keyID}
	h.sym.init(suite, hello, k.pub[:])
	copy(h.re[:], msg[:DHLen])
	h.sym.mixHash(h.re[:])
	es, err := k.dh(h.re[:])
	if err != nil {
		return nil, nil, ErrHandshake
	}
	h.sym.mixKey(es[:])
	payload, err := h.sym.decryptAndHash(msg[DHLen:])
	if err != nil {
		return nil, nil, ErrHandshake
	}
	return h, payload, nil
}

// ParseHello splits a HELLO body into suite, key id and Noise message 1,
// checking only the framing (the fuzz target's first half).
func ParseHello(hello []byte) (suite uint8, keyID uint32, msg []byte, err error) {
	if len(hello) < HelloPrefix+DHLen+TagSize || hello[0] != HelloVersion {
		return 0, 0, nil, ErrBadHello
	}
	if !validSuite(hello[1]) {
		return 0, 0, nil, ErrBadSuite
	}
	return hello[1], binary.BigEndian.Uint32(hello[2:6]), hello[HelloPrefix:], nil
}

// Finish writes Noise message 2 (e, ee: one X25519 with a pre-generated
// ephemeral) carrying payload (the AUTH_OK or ERROR frame), appended to dst,
// and returns the record state. It may be called once.
func (h *ServerHandshake) Finish(dst, payload []byte) ([]byte, *State, error) {
	if h.sym.hh == nil {
		return nil, nil, ErrHandshake
	}
	var e ephemeral
	var err error
	if h.rng != nil {
		e, err = newEphemeral(h.rng)
	} else {
		e, err = takeEphemeral()
	}
	if err != nil {
		return nil, nil, err
	}
	dst = append(dst, e.pub[:]...)
	h.sym.mixHash(e.pub[:])
	ee, err := e.dh(h.re[:])
	e = ephemeral{}
	if err != nil {
		return nil, nil, ErrHandshake // the client's e was a low-order point
	}
	h.sym.mixKey(ee[:])
	out, err := h.sym.encryptAndHash(dst, payload)
	if err != nil {
		return nil, nil, err
	}
	k1, k2 := h.sym.split()
	h.sym.hh = nil
	st, err := newState(h.sym.suite, k2, k1)
	return out, st, err
}
