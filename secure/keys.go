package secure

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/flynn/noise"
	"golang.org/x/crypto/curve25519"
)

// ServerKey is one server static key pair with its id.
type ServerKey struct {
	ID      uint32
	Private [32]byte
	Public  [32]byte
}

// GenerateKey makes a new X25519 key pair (rng nil: crypto/rand).
func GenerateKey(id uint32, rng io.Reader) (ServerKey, error) {
	if rng == nil {
		rng = rand.Reader
	}
	k := ServerKey{ID: id}
	if _, err := io.ReadFull(rng, k.Private[:]); err != nil {
		return k, err
	}
	return k, k.derive()
}

func (k *ServerKey) derive() error {
	pub, err := curve25519.X25519(k.Private[:], curve25519.Basepoint)
	if err != nil {
		return err
	}
	copy(k.Public[:], pub)
	return nil
}

// Pin is the string a client pins: "<id>:<public key, 64 hex digits>".
func (k ServerKey) Pin() string { return fmt.Sprintf("%d:%x", k.ID, k.Public) }

// PinnedKey is a server public key a client trusts.
type PinnedKey struct {
	ID     uint32
	Public [32]byte
}

// ParsePin parses "<id>:<64 hex digits>".
func ParsePin(s string) (PinnedKey, error) {
	var p PinnedKey
	id, pub, ok := strings.Cut(strings.TrimSpace(s), ":")
	n, err := strconv.ParseUint(id, 10, 32)
	if !ok || err != nil {
		return p, fmt.Errorf("secure: pin %q: want <id>:<64 hex digits>", s)
	}
	b, err := hex.DecodeString(pub)
	if err != nil || len(b) != 32 {
		return p, fmt.Errorf("secure: pin %q: public key must be 64 hex digits", s)
	}
	p.ID = uint32(n)
	copy(p.Public[:], b)
	return p, nil
}

// KeyRing is the server's loaded static keys: several at once so they can
// rotate without breaking clients that pin an older one, and one active,
// the one `longlink keys` prints for new clients. Immutable; reloading
// builds a new ring.
type KeyRing struct {
	keys   map[uint32]noise.DHKey
	pub    map[uint32][32]byte
	active uint32
}

// NewKeyRing builds a ring; active must be one of keys.
func NewKeyRing(keys []ServerKey, active uint32) (*KeyRing, error) {
	r := &KeyRing{keys: map[uint32]noise.DHKey{}, pub: map[uint32][32]byte{}, active: active}
	for _, k := range keys {
		if _, dup := r.keys[k.ID]; dup {
			return nil, fmt.Errorf("secure: duplicate key id %d", k.ID)
		}
		if err := k.derive(); err != nil {
			return nil, fmt.Errorf("secure: key %d: %w", k.ID, err)
		}
		r.keys[k.ID] = noise.DHKey{Private: slices.Clone(k.Private[:]), Public: slices.Clone(k.Public[:])}
		r.pub[k.ID] = k.Public
	}
	if _, ok := r.keys[active]; !ok {
		return nil, fmt.Errorf("secure: active key id %d is not in the key file", active)
	}
	return r, nil
}

// Active returns the active key's id and public half.
func (r *KeyRing) Active() PinnedKey { return PinnedKey{r.active, r.pub[r.active]} }

// IDs returns the loaded key ids, sorted.
func (r *KeyRing) IDs() []uint32 {
	ids := make([]uint32, 0, len(r.keys))
	for id := range r.keys {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Pins returns every loaded key as a pin string, active first.
func (r *KeyRing) Pins() []string {
	out := []string{PinnedKey{r.active, r.pub[r.active]}.String()}
	for _, id := range r.IDs() {
		if id != r.active {
			out = append(out, PinnedKey{id, r.pub[id]}.String())
		}
	}
	return out
}

func (p PinnedKey) String() string { return fmt.Sprintf("%d:%x", p.ID, p.Public) }

// keyFile is the on-disk format (JSON, mode 0600):
//
//	{"active": 2, "keys": [{"id": 1, "private": "<64 hex>"}, {"id": 2, "private": "..."}]}
type keyFile struct {
	Active uint32 `json:"active"`
	Keys   []struct {
		ID      uint32 `json:"id"`
		Private string `json:"private"`
	} `json:"keys"`
}

// LoadKeyRing reads a key file written by SaveKeys. The file must not be
// readable by group or others.
func LoadKeyRing(path string) (*KeyRing, error) {
	keys, active, err := LoadKeys(path)
	if err != nil {
		return nil, err
	}
	return NewKeyRing(keys, active)
}

// LoadKeys reads a key file's keys and active id.
func LoadKeys(path string) ([]ServerKey, uint32, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, 0, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, 0, fmt.Errorf("secure: %s is mode %v: server keys must be 0600", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	var f keyFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, 0, fmt.Errorf("secure: %s: %w", path, err)
	}
	if len(f.Keys) == 0 {
		return nil, 0, errors.New("secure: " + path + ": no keys")
	}
	keys := make([]ServerKey, 0, len(f.Keys))
	for _, fk := range f.Keys {
		b, err := hex.DecodeString(fk.Private)
		if err != nil || len(b) != 32 {
			return nil, 0, fmt.Errorf("secure: %s: key %d: private key must be 64 hex digits", path, fk.ID)
		}
		k := ServerKey{ID: fk.ID}
		copy(k.Private[:], b)
		if err := k.derive(); err != nil {
			return nil, 0, err
		}
		keys = append(keys, k)
	}
	return keys, f.Active, nil
}

// SaveKeys writes keys to path with mode 0600 (atomically: temp file, rename).
func SaveKeys(path string, keys []ServerKey, active uint32) error {
	var f keyFile
	f.Active = active
	for _, k := range keys {
		f.Keys = append(f.Keys, struct {
			ID      uint32 `json:"id"`
			Private string `json:"private"`
		}{k.ID, hex.EncodeToString(k.Private[:])})
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o600); err != nil { // WriteFile keeps an existing file's mode
		return err
	}
	return os.Rename(tmp, path)
}
