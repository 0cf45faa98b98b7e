package shake

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// KeyFile is the key store's file inside its directory.
const KeyFile = "keys.json"

// KeyStore holds the AES-128 ticket keys by key id. It lives in its own
// directory (0700, file 0600), never next to the ticket files, and its
// material is never printed: String and the error messages name key ids
// only. Immutable; safe for concurrent use.
type KeyStore struct {
	blocks []cipher.Block // by key id; nil where unknown
	n      int
}

type keyFileJSON struct {
	Version int           `json:"version"`
	Keys    []keyFileItem `json:"keys"`
}

type keyFileItem struct {
	ID  uint16 `json:"id"`
	Key string `json:"key"` // 32 hex digits
}

// NewKeyStore builds a key store from raw 16-byte keys by id.
func NewKeyStore(keys map[uint16][]byte) (*KeyStore, error) {
	ks := &KeyStore{blocks: make([]cipher.Block, MaxKeys)}
	for id, k := range keys {
		if len(k) != 16 {
			return nil, fmt.Errorf("key %d: want 16 bytes", id)
		}
		blk, err := aes.NewCipher(k)
		if err != nil {
			return nil, err
		}
		ks.blocks[id] = blk
		ks.n++
	}
	return ks, nil
}

// RandomKeyStore returns n fresh keys with ids 0..n-1 (tests, benchmarks).
func RandomKeyStore(n int) (*KeyStore, error) {
	keys, err := randomKeys(n)
	if err != nil {
		return nil, err
	}
	return NewKeyStore(keys)
}

func randomKeys(n int) (map[uint16][]byte, error) {
	if n < 1 || n > MaxKeys {
		return nil, fmt.Errorf("key count %d outside 1..%d", n, MaxKeys)
	}
	keys := make(map[uint16][]byte, n)
	for i := 0; i < n; i++ {
		k := make([]byte, 16)
		if _, err := rand.Read(k); err != nil {
			return nil, err
		}
		keys[uint16(i)] = k
	}
	return keys, nil
}

// CreateKeyStore makes dir (0700) holding n fresh random keys, ids 0..n-1,
// in keys.json (0600). It refuses to overwrite an existing store.
func CreateKeyStore(dir string, n int) error {
	keys, err := randomKeys(n)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	path := filepath.Join(dir, KeyFile)
	out := keyFileJSON{Version: 1}
	for i := 0; i < n; i++ {
		out.Keys = append(out.Keys, keyFileItem{ID: uint16(i), Key: hex.EncodeToString(keys[uint16(i)])})
	}
	data, err := json.MarshalIndent(out, "", " ")
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("key store %s already exists; not overwriting", path)
		}
		return err
	}
	if _, err := f.Write(append(data, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// LoadKeyStore reads a key store directory, refusing one that group or
// others can read or enter (like ssh with private keys).
func LoadKeyStore(dir string) (*KeyStore, error) {
	for _, p := range []string{dir, filepath.Join(dir, KeyFile)} {
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if st.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("key store %s has mode %v; want no group or other access (chmod go-rwx)", p, st.Mode().Perm())
		}
	}
	data, err := os.ReadFile(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, err
	}
	var in keyFileJSON
	if err := json.Unmarshal(data, &in); err != nil {
		// The decoder's message may quote file content: do not pass it on.
		return nil, fmt.Errorf("key store %s: not valid JSON", dir)
	}
	if in.Version != 1 {
		return nil, fmt.Errorf("key store %s: version %d, want 1", dir, in.Version)
	}
	keys := make(map[uint16][]byte, len(in.Keys))
	for _, it := range in.Keys {
		k, err := hex.DecodeString(it.Key)
		if err != nil || len(k) != 16 {
			return nil, fmt.Errorf("key store %s: key %d is not 32 hex digits", dir, it.ID)
		}
		if _, dup := keys[it.ID]; dup {
			return nil, fmt.Errorf("key store %s: key %d appears twice", dir, it.ID)
		}
		keys[it.ID] = k
	}
	return NewKeyStore(keys)
}

func (k *KeyStore) block(id uint16) cipher.Block { return k.blocks[id] }

// Has reports whether the store holds key id.
func (k *KeyStore) Has(id uint16) bool { return k.blocks[id] != nil }

// Len returns the number of keys.
func (k *KeyStore) Len() int { return k.n }

// String names the store without its material.
func (k *KeyStore) String() string { return fmt.Sprintf("KeyStore(%d keys)", k.n) }
