// Package auth owns longlink's access tokens and the key file they are signed
// with. A token is verified locally with no RPC: HMAC-SHA256 (truncated to
// 128 bits) over (key id, user id, expiry, device), so the gateway needs only
// the key file. Keys carry ids so they can rotate: mint with the active key,
// accept any key still listed.
//
// Token layout before base64url (no padding) encoding:
//
//	ver u8 (=1) | key id u32 | uid u64 | expiry unix-seconds i64 | device length u8 | device | mac [16]
//
// Everything in this package is goroutine-safe.
package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"time"
)

const (
	tokenVersion = 1
	macSize      = 16
	fixedSize    = 1 + 4 + 8 + 8 + 1
	// MaxDevice is the longest device id a token may carry.
	MaxDevice = 64
	// MaxTokenLen bounds the encoded token length accepted by Verify.
	MaxTokenLen = (fixedSize + MaxDevice + macSize + 2) * 4 / 3
)

// strictB64 is the token encoding, decoding strictly: the unused low bits
// of the last character must be zero, so each token has exactly one
// spelling. (It still skips CR and LF; Verify rejects those itself.)
var strictB64 = base64.RawURLEncoding.Strict()

// b64url marks the bytes of the base64url alphabet.
var b64url = func() (t [256]bool) {
	for _, c := range []byte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") {
		t[c] = true
	}
	return t
}()

// Errors from Verify. ErrExpired is distinguished so clients can be told to
// fetch a fresh token rather than that theirs is forged.
var (
	ErrMalformed  = errors.New("auth: malformed token")
	ErrUnknownKey = errors.New("auth: token signed by an unknown key")
	ErrBadMAC     = errors.New("auth: token signature mismatch")
	ErrExpired    = errors.New("auth: token expired")
)

// Claims are what a valid token proves.
type Claims struct {
	KeyID  uint32
	UID    uint64
	Device string // empty: any device id the client presents
	Expiry time.Time
}

func (k *KeySet) sign(key []byte, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)[:macSize]
}

// macState is a reusable HMAC state with the buffers Verify hashes from.
type macState struct {
	h   hash.Hash
	in  [MaxTokenLen]byte
	sum [sha256.Size]byte
}

// Mint signs claims with the active key. Expiry is rounded down to seconds.
func (k *KeySet) Mint(uid uint64, device string, expiry time.Time) (string, error) {
	if len(device) > MaxDevice {
		return "", fmt.Errorf("auth: device id longer than %d bytes", MaxDevice)
	}
	key, ok := k.keys[k.active]
	if !ok {
		return "", errors.New("auth: key set has no active key")
	}
	b := make([]byte, 0, fixedSize+len(device)+macSize)
	b = append(b, tokenVersion)
	b = binary.BigEndian.AppendUint32(b, k.active)
	b = binary.BigEndian.AppendUint64(b, uid)
	b = binary.BigEndian.AppendUint64(b, uint64(expiry.Unix()))
	b = append(b, byte(len(device)))
	b = append(b, device...)
	b = append(b, k.sign(key, b)...)
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// Verify checks a token's format, signature and expiry at time now.
func (k *KeySet) Verify(token string, now time.Time) (Claims, error) {
	return k.VerifyBytes([]byte(token), now)
}

// VerifyBytes is Verify for a token held in a byte slice (a frame body):
// it allocates only the returned device id.
func (k *KeySet) VerifyBytes(token []byte, now time.Time) (Claims, error) {
	var c Claims
	if len(token) > MaxTokenLen || len(token) == 0 {
		return c, ErrMalformed
	}
	// The decoder skips CR and LF anywhere: refuse every byte outside the
	// alphabet first, so a token is accepted only as it was minted.
	for _, ch := range token {
		if !b64url[ch] {
			return c, ErrMalformed
		}
	}
	var buf [MaxTokenLen]byte
	n, err := strictB64.Decode(buf[:], token)
	if err != nil || n < fixedSize+macSize || buf[0] != tokenVersion {
		return c, ErrMalformed
	}
	b := buf[:n]
	dl := int(b[fixedSize-1])
	if dl > MaxDevice || n != fixedSize+dl+macSize {
		return c, ErrMalformed
	}
	c.KeyID = binary.BigEndian.Uint32(b[1:5])
	pool, ok := k.macs[c.KeyID]
	if !ok {
		return c, ErrUnknownKey
	}
	body, mac := b[:fixedSize+dl], b[fixedSize+dl:]
	// Hash from the pooled state's own buffers: a stack slice passed to the
	// hash.Hash interface would move buf and the sum to the heap.
	st := pool.Get().(*macState)
	st.h.Reset()
	st.h.Write(st.in[:copy(st.in[:], body)])
	good := subtle.ConstantTimeCompare(st.h.Sum(st.sum[:0])[:macSize], mac) == 1
	pool.Put(st)
	if !good {
		return c, ErrBadMAC
	}
	c.UID = binary.BigEndian.Uint64(b[5:13])
	c.Expiry = time.Unix(int64(binary.BigEndian.Uint64(b[13:21])), 0)
	c.Device = string(b[fixedSize : fixedSize+dl])
	if !now.Before(c.Expiry) {
		return c, ErrExpired
	}
	return c, nil
}
