package secure

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/longlink/longlink/internal/keyfile"
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
	keys   map[uint32]staticKey
	pub    map[uint32][32]byte
	active uint32
	file   keyfile.Set // the keys in the key file's form, for Rotate, Retire and SaveKeyRing
}

// staticKey is a loaded server key pair.
type staticKey = keyPair

// keyFormat is the server key file (JSON, mode 0600):
//
//	{"active": 2, "keys": [{"id": 1, "private": "<64 hex>"}, {"id": 2, "private": "..."}]}
var keyFormat = keyfile.Format{Owner: "secure", Field: "private", Noun: "private key", Size: 32}

// NewKeyRing builds a ring; active must be one of keys.
func NewKeyRing(keys []ServerKey, active uint32) (*KeyRing, error) {
	set := keyfile.Set{Active: active, Keys: make([]keyfile.Key, len(keys))}
	for i, k := range keys {
		set.Keys[i] = keyfile.Key{ID: k.ID, Secret: slices.Clone(k.Private[:])}
	}
	if err := keyFormat.Check(set); err != nil {
		return nil, err
	}
	r := &KeyRing{keys: map[uint32]staticKey{}, pub: map[uint32][32]byte{}, active: active, file: set}
	for _, k := range keys {
		if err := k.derive(); err != nil {
			return nil, fmt.Errorf("secure: key %d: %w", k.ID, err)
		}
		r.keys[k.ID] = staticKey{priv: k.Private, pub: k.Public}
		r.pub[k.ID] = k.Public
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

// Rotate returns a ring with a new active key (the next id) beside the old
// ones.
func (r *KeyRing) Rotate() (*KeyRing, error) {
	return fromSet(keyFormat.Rotate(r.file, nil))
}

// Retire returns a ring without key id (never the active one).
func (r *KeyRing) Retire(id uint32) (*KeyRing, error) {
	return fromSet(keyFormat.Retire(r.file, id))
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

// LoadOrCreateKeyRing reads path, creating it with one new key (id 1) if
// absent; created reports which.
func LoadOrCreateKeyRing(path string) (r *KeyRing, created bool, err error) {
	set, created, err := keyFormat.LoadOrCreate(path)
	if err != nil {
		return nil, false, err
	}
	r, err = fromSet(set, nil)
	return r, created && err == nil, err
}

// LoadKeys reads a key file's keys and active id. A missing file's error
// matches os.ErrNotExist.
func LoadKeys(path string) ([]ServerKey, uint32, error) {
	set, err := keyFormat.Load(path)
	if err != nil {
		return nil, 0, err
	}
	keys, err := serverKeys(set)
	if err != nil {
		return nil, 0, fmt.Errorf("secure: %s: %w", path, err)
	}
	return keys, set.Active, nil
}

// serverKeys are the key pairs of a checked key file's content.
func serverKeys(set keyfile.Set) ([]ServerKey, error) {
	keys := make([]ServerKey, len(set.Keys))
	for i, fk := range set.Keys {
		keys[i].ID = fk.ID
		copy(keys[i].Private[:], fk.Secret)
		if err := keys[i].derive(); err != nil {
			return nil, fmt.Errorf("key %d: %w", fk.ID, err)
		}
	}
	return keys, nil
}

// fromSet builds the ring of a key file's content as keyFormat returned it
// (LoadOrCreate, Rotate, ...), or passes its error on.
func fromSet(set keyfile.Set, err error) (*KeyRing, error) {
	if err != nil {
		return nil, err
	}
	keys, err := serverKeys(set)
	if err != nil {
		return nil, fmt.Errorf("secure: %w", err)
	}
	return NewKeyRing(keys, set.Active)
}

// SaveKeys writes keys to path with mode 0600 (atomically: temp file, rename).
func SaveKeys(path string, keys []ServerKey, active uint32) error {
	r, err := NewKeyRing(keys, active)
	if err != nil {
		return err
	}
	return SaveKeyRing(path, r)
}

// SaveKeyRing writes a ring's keys to path like SaveKeys.
func SaveKeyRing(path string, r *KeyRing) error { return keyFormat.Save(path, r.file) }
