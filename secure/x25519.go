package secure

import (
	"errors"

	cx "github.com/cloudflare/circl/dh/x25519"
)

// X25519 (RFC 7748) from github.com/cloudflare/circl, not crypto/ecdh, on
// the handshake path: the storm profile put the handshake's time in X25519,
// and here
//
//   - a DH is circl's Montgomery ladder, assembly with MULX/ADX on amd64
//     (~35 µs on the reference host against crypto/ecdh's ~55 µs), without
//     allocation;
//   - a public key (the ephemeral's) is circl's fixed-base ladder with its
//     precomputed table (~28 µs), where ecdh.NewPrivateKey runs the full
//     variable-base ladder, and does so even when only a DH is wanted.
//
// The results are crypto/ecdh's bytes (TestX25519MatchesECDH, random and
// RFC 7748 inputs); a low-order point (an all-zero result) is refused as
// crypto/ecdh and flynn/noise refuse it.

var (
	errLowOrder = errors.New("secure: X25519 with a low-order point")
	errPointLen = errors.New("secure: X25519 point is not 32 bytes")
)

// keyPair is an X25519 key pair: the raw private scalar and its public key.
type keyPair struct {
	priv [32]byte
	pub  [32]byte
}

// dh returns X25519(k.priv, pub).
func (k *keyPair) dh(pub []byte) ([32]byte, error) {
	var out [32]byte
	err := x25519(&out, &k.priv, pub)
	return out, err
}

// x25519 sets dst = X25519(scalar, point).
func x25519(dst, scalar *[32]byte, point []byte) error {
	if len(point) != DHLen {
		return errPointLen
	}
	var p cx.Key
	copy(p[:], point)
	cx.Shared((*cx.Key)(dst), (*cx.Key)(scalar), &p) // its own low-order verdict is the zero check below
	var acc byte
	for _, c := range dst {
		acc |= c
	}
	if acc == 0 {
		return errLowOrder
	}
	return nil
}

// x25519Base sets dst = X25519(scalar, 9), the public key of scalar.
func x25519Base(dst, scalar *[32]byte) {
	cx.KeyGen((*cx.Key)(dst), (*cx.Key)(scalar))
}
