package logic

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
)

// Data types of the sync protocol (pb.SyncType); also the PUSH type.
const (
	typeMessages uint8 = 1
	typeContacts uint8 = 2
	typeProfile  uint8 = 3
	numTypes           = 3
)

// SyncKey is the decoded form of the opaque key a client presents: the
// version it holds of each data type, bound to one user.
//
// Wire format (big-endian), 46 bytes:
//
//	format u8 (=1) | uid u64 | count u8 (=3) | count × (type u8 | version u64) | mac [8]
//
// mac is the first 8 bytes of HMAC-SHA256(secret, everything before it); the
// secret is generated on first start and kept in the store, so keys stay
// valid across restarts. A client can't forge a key, replay another user's,
// or move its versions.
type SyncKey struct {
	UID uint64
	Ver [numTypes + 1]uint64 // indexed by type; [0] unused
}

const (
	keyFormat = 1
	macLen    = 8
	keyLen    = 1 + 8 + 1 + numTypes*9 + macLen
)

var (
	errKeyMalformed = errors.New("malformed sync key")
	errKeyForged    = errors.New("sync key signature mismatch")
)

// Encode returns the signed wire form.
func (k SyncKey) Encode(secret []byte) []byte {
	b := make([]byte, 0, keyLen)
	b = append(b, keyFormat)
	b = binary.BigEndian.AppendUint64(b, k.UID)
	b = append(b, numTypes)
	for t := 1; t <= numTypes; t++ {
		b = append(b, byte(t))
		b = binary.BigEndian.AppendUint64(b, k.Ver[t])
	}
	return append(b, mac(secret, b)...)
}

func mac(secret, b []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write(b)
	return h.Sum(nil)[:macLen]
}

// DecodeSyncKey parses and authenticates a key. It checks the format and the
// signature only; the caller checks the uid and that no version is ahead of
// the user's head.
func DecodeSyncKey(b, secret []byte) (SyncKey, error) {
	var k SyncKey
	if len(b) != keyLen || b[0] != keyFormat || b[9] != numTypes {
		return k, errKeyMalformed
	}
	body := b[:keyLen-macLen]
	if !hmac.Equal(mac(secret, body), b[keyLen-macLen:]) {
		return k, errKeyForged
	}
	k.UID = binary.BigEndian.Uint64(b[1:9])
	p := b[10:]
	for t := 1; t <= numTypes; t++ {
		if p[0] != byte(t) {
			return SyncKey{}, errKeyMalformed
		}
		k.Ver[t] = binary.BigEndian.Uint64(p[1:9])
		p = p[9:]
	}
	return k, nil
}
