package secure

import (
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"hash"
	"io"
	"sync/atomic"

	"golang.org/x/crypto/chacha20poly1305"
)

// Noise NK (revision 34 of the Noise Protocol Framework) for exactly the two
// suites longlink speaks, written out on circl's X25519 (x25519.go),
// crypto/sha256 and x/crypto's ChaCha20-Poly1305. It replaced github.com/flynn/noise on the
// handshake path because flynn's DH goes through curve25519.X25519, which
// builds an ecdh.PrivateKey per call and so computes a public key it throws
// away: every DH cost two scalar multiplications, a handshake six, plus 109
// allocations. Here a handshake is two multiplications on each side plus the
// ephemeral key (pre-generated on the server: Ephemerals). The bytes are
// Noise's own: TestVectors (docs/protocol.md) and TestCrossFlynn, which runs
// either side of this code against flynn/noise with random keys and
// payloads, keep it so.
//
//	NK:  <- s
//	     ...
//	     -> e, es
//	     <- e, ee

// symmetric is Noise's SymmetricState with SHA-256 (HASHLEN 32) and the
// scratch its HMACs need, so a handshake allocates only the struct and one
// hash.
type symmetric struct {
	suite    uint8
	ck, h, k [32]byte
	hh       hash.Hash
	pad      [64]byte
	mac      [32]byte
	tmp      [32]byte
	b1, b2   [1]byte
	nonce    [12]byte // always zero: each handshake key encrypts once
}

// init is InitializeSymmetric(protocol name), MixHash(prologue), then the
// NK pre-message MixHash(rs). Both protocol names are at most 32 bytes, so h
// is the name zero-padded. prefix is the HELLO prefix.
func (s *symmetric) init(suite uint8, prefix, rs []byte) {
	s.suite = suite
	s.hh = sha256.New()
	s.b1[0], s.b2[0] = 1, 2
	copy(s.h[:], SuiteName(suite))
	s.ck = s.h
	n := copy(s.pad[:], prologue)
	n += copy(s.pad[n:], prefix[:HelloPrefix])
	s.mixHash(s.pad[:n])
	s.mixHash(rs)
}

// mixHash: h = SHA-256(h || data).
func (s *symmetric) mixHash(data []byte) {
	s.hh.Reset()
	s.hh.Write(s.h[:])
	s.hh.Write(data)
	s.hh.Sum(s.h[:0])
}

// hmac returns HMAC-SHA256(key, a || b).
func (s *symmetric) hmac(key *[32]byte, a, b []byte) [32]byte {
	for i := range s.pad {
		s.pad[i] = 0x36
	}
	for i, c := range key {
		s.pad[i] ^= c
	}
	s.hh.Reset()
	s.hh.Write(s.pad[:])
	s.hh.Write(a)
	s.hh.Write(b)
	s.hh.Sum(s.mac[:0])
	for i := range s.pad {
		s.pad[i] = 0x5c
	}
	for i, c := range key {
		s.pad[i] ^= c
	}
	s.hh.Reset()
	s.hh.Write(s.pad[:])
	s.hh.Write(s.mac[:])
	s.hh.Sum(s.mac[:0])
	return s.mac
}

// hkdf2 is Noise's HKDF with two outputs, the second left in s.tmp.
func (s *symmetric) hkdf2(ikm []byte) (out1 [32]byte) {
	tk := s.hmac(&s.ck, ikm, nil)
	out1 = s.hmac(&tk, s.b1[:], nil)
	s.tmp = out1
	s.tmp = s.hmac(&tk, s.tmp[:], s.b2[:])
	return out1
}

// mixKey: ck, k = HKDF(ck, ikm); the nonce restarts at 0.
func (s *symmetric) mixKey(ikm []byte) {
	s.ck = s.hkdf2(ikm)
	s.k = s.tmp
}

func (s *symmetric) aead() (cipher.AEAD, error) {
	if s.suite == SuiteAESGCM {
		return newGCM(s.k)
	}
	return chacha20poly1305.New(s.k[:])
}

// encryptAndHash appends ENCRYPT(k, 0, h, plaintext) to dst and mixes the
// ciphertext into h.
func (s *symmetric) encryptAndHash(dst, plaintext []byte) ([]byte, error) {
	a, err := s.aead()
	if err != nil {
		return nil, err
	}
	out := a.Seal(dst, s.nonce[:], plaintext, s.h[:])
	s.mixHash(out[len(dst):])
	return out, nil
}

// decryptAndHash opens ct (into a new slice: ct is the caller's) and mixes
// it into h.
func (s *symmetric) decryptAndHash(ct []byte) ([]byte, error) {
	a, err := s.aead()
	if err != nil {
		return nil, err
	}
	p, err := a.Open(nil, s.nonce[:], ct, s.h[:])
	if err != nil {
		return nil, err
	}
	s.mixHash(ct)
	return p, nil
}

// split returns the initiator-to-responder and responder-to-initiator keys
// and wipes the handshake's secrets.
func (s *symmetric) split() (k1, k2 [32]byte) {
	k1 = s.hkdf2(nil)
	k2 = s.tmp
	s.ck, s.h, s.k, s.mac, s.tmp, s.pad = [32]byte{}, [32]byte{}, [32]byte{}, [32]byte{}, [32]byte{}, [64]byte{}
	return k1, k2
}

// ephemeral is a one-use X25519 key pair.
type ephemeral = keyPair

// newEphemeral reads 32 bytes from rng as the private key (what flynn/noise
// does, so a fixed rng gives the documented vectors; ecdh.GenerateKey would
// ignore it) and computes the public half.
func newEphemeral(rng io.Reader) (ephemeral, error) {
	var e ephemeral
	if rng == nil {
		rng = rand.Reader
	}
	if _, err := io.ReadFull(rng, e.priv[:]); err != nil {
		return ephemeral{}, err
	}
	x25519Base(&e.pub, &e.priv)
	return e, nil
}

// Ephemeral key pairs made ahead of time, so the server's handshake does two
// DHs instead of two DHs and a fixed-base multiplication. The
// gateway's handshake workers call Pregenerate when they have no job, so the
// store smooths bursts; in a sustained storm it is drained and refilled
// between jobs, and every handshake then costs its key after all (one
// fixed-base multiplication, ~28 µs here, half a full ladder).
//
// Why it is safe: a key pair is taken from the channel by exactly one
// handshake and never returned, so no two handshakes share an ephemeral
// (which would break Noise's security); it comes from crypto/rand like an
// inline one; and until used it protects nothing, so holding it in memory a
// few seconds longer exposes no session that a memory disclosure of the
// process (which also holds the static key and every live session key)
// would not. The store is bounded: at most EphemeralStore keys of 64 B,
// fewer after SetEphemeralStore.
const EphemeralStore = 1024

var (
	ephemerals = make(chan ephemeral, EphemeralStore)
	storeLimit atomic.Int32 // Pregenerate fills up to this many
)

func init() { storeLimit.Store(EphemeralStore) }

// SetEphemeralStore sets how many key pairs Pregenerate keeps ready in this
// process (clamped to 0..EphemeralStore). A gateway worker process that
// shares the host with many others takes its share, so their start-up does
// not pre-generate EphemeralStore keys each at once. Keys already stored
// stay until used.
func SetEphemeralStore(n int) { storeLimit.Store(int32(min(max(n, 0), EphemeralStore))) }

// EphemeralTarget reports the store's fill target (SetEphemeralStore).
func EphemeralTarget() int { return int(storeLimit.Load()) }

// Pregenerate adds one key pair to the store; false when it is full (then
// the caller should block for work instead of spinning).
func Pregenerate() bool {
	if len(ephemerals) >= int(storeLimit.Load()) {
		return false
	}
	e, err := newEphemeral(nil)
	if err != nil {
		return false
	}
	select {
	case ephemerals <- e:
		return true
	default:
		return false
	}
}

// Pregenerated reports how many key pairs are in the store (a gauge).
func Pregenerated() int { return len(ephemerals) }

// takeEphemeral returns a stored key pair, or makes one.
func takeEphemeral() (ephemeral, error) {
	select {
	case e := <-ephemerals:
		return e, nil
	default:
		return newEphemeral(nil)
	}
}
