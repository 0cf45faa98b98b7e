package secure

import (
	"crypto/rand"
	"encoding/binary"
	"io"

	"github.com/flynn/noise"
)

var suites = [3]noise.CipherSuite{
	SuiteChaChaPoly: noise.NewCipherSuite(noise.DH25519, noise.CipherChaChaPoly, noise.HashSHA256),
	SuiteAESGCM:     noise.NewCipherSuite(noise.DH25519, noise.CipherAESGCM, noise.HashSHA256),
}

func validSuite(s uint8) bool { return s == SuiteChaChaPoly || s == SuiteAESGCM }

func helloPrologue(prefix []byte) []byte {
	return append([]byte(prologue), prefix[:HelloPrefix]...)
}

// ClientHandshake is a client's handshake between HELLO and HELLO_OK.
type ClientHandshake struct {
	hs    *noise.HandshakeState
	suite uint8
}

// Hello starts a handshake with the server key serverPub (id keyID) and
// returns the HELLO body: version, suite, key id, then Noise NK message 1
// (e, es) carrying payload, which must be the AUTH frame. rng nil means
// crypto/rand (tests pass a fixed one for the test vectors).
func Hello(suite uint8, keyID uint32, serverPub []byte, payload []byte, rng io.Reader) (*ClientHandshake, []byte, error) {
	if !validSuite(suite) {
		return nil, nil, ErrBadSuite
	}
	if len(serverPub) != DHLen {
		return nil, nil, ErrBadHello
	}
	if rng == nil {
		rng = rand.Reader
	}
	body := make([]byte, HelloPrefix, HelloPrefix+DHLen+len(payload)+TagSize)
	body[0], body[1] = HelloVersion, suite
	binary.BigEndian.PutUint32(body[2:6], keyID)
	hs, err := noise.NewHandshakeState(noise.Config{
		CipherSuite: suites[suite], Random: rng, Pattern: noise.HandshakeNK,
		Initiator: true, Prologue: helloPrologue(body), PeerStatic: serverPub,
	})
	if err != nil {
		return nil, nil, err
	}
	body, _, _, err = hs.WriteMessage(body, payload)
	if err != nil {
		return nil, nil, err
	}
	return &ClientHandshake{hs: hs, suite: suite}, body, nil
}

// Finish reads the HELLO_OK body (Noise message 2: e, ee) and returns its
// payload (the AUTH_OK or ERROR frame) and the record state. A server that
// does not hold the pinned private key cannot produce a message 2 that
// decrypts: that is ErrForgedKey.
func (c *ClientHandshake) Finish(helloOK []byte) (payload []byte, st *State, err error) {
	if len(helloOK) < DHLen+TagSize {
		return nil, nil, ErrBadHello
	}
	payload, cs1, cs2, err := c.hs.ReadMessage(nil, helloOK)
	if err != nil || cs1 == nil {
		return nil, nil, ErrForgedKey
	}
	st, err = newState(c.suite, cs1.UnsafeKey(), cs2.UnsafeKey())
	return payload, st, err
}

// ServerHandshake is the server's side between reading HELLO and writing
// HELLO_OK. Both happen in one call on the loop, so it never outlives it.
type ServerHandshake struct {
	hs    *noise.HandshakeState
	suite uint8
	keyID uint32
}

// KeyID returns the server key the client named.
func (h *ServerHandshake) KeyID() uint32 { return h.keyID }

// Suite returns the suite the client chose.
func (h *ServerHandshake) Suite() uint8 { return h.suite }

// Accept parses a HELLO body, looks up the key it names and reads Noise
// message 1; it returns the client's first-flight payload (the AUTH frame,
// still to be validated by the caller). Errors: ErrBadHello, ErrBadSuite,
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
	if rng == nil {
		rng = rand.Reader
	}
	hs, err := noise.NewHandshakeState(noise.Config{
		CipherSuite: suites[suite], Random: rng, Pattern: noise.HandshakeNK,
		Prologue: helloPrologue(hello), StaticKeypair: k,
	})
	if err != nil {
		return nil, nil, err
	}
	payload, _, _, err := hs.ReadMessage(nil, msg)
	if err != nil {
		return nil, nil, ErrHandshake
	}
	return &ServerHandshake{hs: hs, suite: suite, keyID: keyID}, payload, nil
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

// Finish writes Noise message 2 (e, ee) carrying payload (the AUTH_OK or
// ERROR frame), appended to dst, and returns the record state.
func (h *ServerHandshake) Finish(dst, payload []byte) ([]byte, *State, error) {
	out, cs1, cs2, err := h.hs.WriteMessage(dst, payload)
	if err != nil {
		return nil, nil, err
	}
	h.hs = nil
	st, err := newState(h.suite, cs2.UnsafeKey(), cs1.UnsafeKey())
	return out, st, err
}
