// Package secure owns longlink's transport encryption: the HELLO handshake
// (Noise NK over X25519 with SHA-256, ChaCha20-Poly1305 by default or
// AES-256-GCM: noise.go, on circl's X25519 and x/crypto, cross-checked against
// github.com/flynn/noise by TestCrossFlynn), the record layer that seals
// every byte after it, and the server's static key ring with key ids.
//
// The wire format is specified in docs/protocol.md ("Encryption"); the test
// vectors there are checked by TestVectors, so the page cannot drift.
//
// After the handshake a connection keeps only a State: two 32-byte keys and
// two 64-bit counters (the handshake object is dropped). Seal and Open run
// without allocation; Open decrypts in place.
package secure

import (
	"errors"
	"fmt"
)

// Cipher suites, byte 1 of the HELLO body.
const (
	SuiteChaChaPoly uint8 = 1 // Noise_NK_25519_ChaChaPoly_SHA256 (default)
	SuiteAESGCM     uint8 = 2 // Noise_NK_25519_AESGCM_SHA256
)

const (
	// HelloVersion is byte 0 of the HELLO body.
	HelloVersion = 1
	// HelloPrefix is the fixed part of the HELLO body before the Noise
	// message: version, suite, key id (u32, big-endian).
	HelloPrefix = 6
	// DHLen is the size of an X25519 public key.
	DHLen = 32
	// TagSize is the AEAD tag size of both suites.
	TagSize = 16
	// RecordHeader is the record length prefix (u24, big-endian): the
	// number of sealed bytes that follow, tag included.
	RecordHeader = 3
	// Overhead is what a record adds to the frame it carries.
	Overhead = RecordHeader + TagSize
)

// prologue is mixed into the handshake hash ahead of the HELLO prefix, so
// suite and key id cannot be changed on the path without failing the
// handshake.
const prologue = "longlink/1 "

// Errors. Each maps to a close code in the gateway (docs/protocol.md).
var (
	ErrBadHello   = errors.New("secure: malformed HELLO")
	ErrBadSuite   = errors.New("secure: unknown cipher suite")
	ErrUnknownKey = errors.New("secure: unknown server key id")
	ErrHandshake  = errors.New("secure: handshake failed")
	ErrForgedKey  = errors.New("secure: server failed to prove its key (forged or wrong key)")
	ErrRecord     = errors.New("secure: record failed authentication")
	ErrTooLarge   = errors.New("secure: record over the size limit")
	ErrExhausted  = errors.New("secure: record counter limit reached; reconnect")
)

// SuiteName returns the Noise protocol name of a suite.
func SuiteName(suite uint8) string {
	switch suite {
	case SuiteChaChaPoly:
		return "Noise_NK_25519_ChaChaPoly_SHA256"
	case SuiteAESGCM:
		return "Noise_NK_25519_AESGCM_SHA256"
	}
	return fmt.Sprintf("suite(%d)", suite)
}
