package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// KeySet is the set of token keys a gateway accepts, and the one it mints
// with. It is immutable after loading; rotate by writing a new file (add the
// new key, make it active, drop the old one after the longest token TTL).
type KeySet struct {
	active uint32
	keys   map[uint32][]byte
	macs   map[uint32]*sync.Pool // per key: reusable *macState, so Verify allocates only the device id
}

// keyFile is the on-disk JSON form. Secrets are hex; the file is 0600.
type keyFile struct {
	Active uint32    `json:"active"`
	Keys   []keyJSON `json:"keys"`
}

type keyJSON struct {
	ID      uint32 `json:"id"`
	Secret  string `json:"secret"`
	Created string `json:"created,omitempty"`
}

// NewKeySet builds a key set from raw secrets (id → secret).
func NewKeySet(active uint32, keys map[uint32][]byte) (*KeySet, error) {
	if _, ok := keys[active]; !ok {
		return nil, fmt.Errorf("auth: active key %d not in the set", active)
	}
	for id, s := range keys {
		if len(s) < 16 {
			return nil, fmt.Errorf("auth: key %d shorter than 16 bytes", id)
		}
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
	raw, err := ReadSecretFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, missingKeyFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	var f keyFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("auth: parse key file %s: %w", path, err)
	}
	keys := make(map[uint32][]byte, len(f.Keys))
	for _, kj := range f.Keys {
		s, err := hex.DecodeString(kj.Secret)
		if err != nil {
			return nil, fmt.Errorf("auth: key %d in %s: secret is not hex", kj.ID, path)
		}
		if _, dup := keys[kj.ID]; dup {
			return nil, fmt.Errorf("auth: key id %d listed twice in %s", kj.ID, path)
		}
		keys[kj.ID] = s
	}
	return NewKeySet(f.Active, keys)
}

// missingKeyFile is LoadKeyFile's error for a path with no file; it
// matches os.ErrNotExist.
type missingKeyFile string

func (p missingKeyFile) Error() string {
	return fmt.Sprintf("auth: no token key file at %s (the gateway creates it on first start with the same --data)", string(p))
}

func (missingKeyFile) Is(target error) bool { return target == os.ErrNotExist }

// CreateKeyFile writes a new key file with one random 32-byte key, mode 0600.
// It refuses to overwrite an existing file.
func CreateKeyFile(path string) (*KeySet, error) {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	f := keyFile{Active: 1, Keys: []keyJSON{{ID: 1, Secret: hex.EncodeToString(secret), Created: time.Now().UTC().Format(time.RFC3339)}}}
	raw, _ := json.MarshalIndent(f, "", "  ")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("auth: create key file: %w", err)
	}
	if _, err := fh.Write(append(raw, '\n')); err != nil {
		fh.Close()
		return nil, err
	}
	if err := fh.Close(); err != nil {
		return nil, err
	}
	return NewKeySet(1, map[uint32][]byte{1: secret})
}

// LoadOrCreate loads path, creating a fresh dev key there if it does not
// exist. created reports whether a key was created.
func LoadOrCreate(path string) (ks *KeySet, created bool, err error) {
	ks, err = LoadKeyFile(path)
	if err == nil {
		return ks, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	ks, err = CreateKeyFile(path)
	return ks, err == nil, err
}
