package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/longlink/longlink/internal/keyfile"
)

// KeySet is the set of token keys a gateway accepts, and the one it mints
// with. It is immutable after loading; rotate by writing a new file (add the
// new key, make it active, drop the old one after the longest token TTL).
type KeySet struct {
	active uint32
	keys   map[uint32][]byte
	macs   map[uint32]*sync.Pool // per key: reusable *macState, so Verify allocates only the device id
}

// keyFormat is the token key file: {"active": N, "keys": [{"id": N,
// "secret": "<hex>", "created": "<RFC 3339>"}]}, mode 0600.
var keyFormat = keyfile.Format{Owner: "auth", Field: "secret", Noun: "secret", MinSize: 16, Stamp: true}

// NewKeySet builds a key set from raw secrets (id → secret).
func NewKeySet(active uint32, keys map[uint32][]byte) (*KeySet, error) {
	set := keyfile.Set{Active: active}
	for id, secret := range keys {
		set.Keys = append(set.Keys, keyfile.Key{ID: id, Secret: secret})
	}
	if err := keyFormat.Check(set); err != nil {
		return nil, err
	}
	ks := &KeySet{active: active, keys: keys, macs: make(map[uint32]*sync.Pool, len(keys))}
	for id, secret := range keys {
		ks.macs[id] = &sync.Pool{New: func() any { return &macState{h: hmac.New(sha256.New, secret)} }}
	}
	return ks, nil
}

// Active returns the id of the key Mint uses.
func (k *KeySet) Active() uint32 { return k.active }

// LoadKeyFile reads a key file written by CreateKeyFile (or by hand). It
// refuses a file group or others may access (see ReadSecretFile) and never
// creates one: a missing file is an error naming the path that matches
// os.ErrNotExist.
func LoadKeyFile(path string) (*KeySet, error) {
	set, err := keyFormat.Load(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, missingKeyFile(path)
	}
	if err != nil {
		return nil, err
	}
	return fromSet(set)
}

// fromSet builds the key set of a file's content.
func fromSet(set keyfile.Set) (*KeySet, error) {
	keys := make(map[uint32][]byte, len(set.Keys))
	for _, k := range set.Keys {
		keys[k.ID] = k.Secret
	}
	return NewKeySet(set.Active, keys)
}

// missingKeyFile is LoadKeyFile's error for a path with no file; it
// matches os.ErrNotExist.
type missingKeyFile string

func (p missingKeyFile) Error() string {
	return fmt.Sprintf("auth: no token key file at %s (the gateway creates it on first start with the same --data)", string(p))
}

func (missingKeyFile) Is(target error) bool { return target == os.ErrNotExist }

// CreateKeyFile writes a new key file with one random 32-byte key, mode 0600
// (atomically: no reader sees a partial file). It refuses to overwrite an
// existing file.
func CreateKeyFile(path string) (*KeySet, error) {
	set, err := keyFormat.New(nil)
	if err != nil {
		return nil, err
	}
	if err := keyFormat.Create(path, set); err != nil {
		return nil, fmt.Errorf("auth: create key file: %w", err)
	}
	return fromSet(set)
}

// LoadOrCreate loads path, creating a fresh dev key there if it does not
// exist. created reports whether a key was created.
func LoadOrCreate(path string) (ks *KeySet, created bool, err error) {
	set, created, err := keyFormat.LoadOrCreate(path)
	if err != nil {
		return nil, false, err
	}
	ks, err = fromSet(set)
	return ks, created && err == nil, err
}
