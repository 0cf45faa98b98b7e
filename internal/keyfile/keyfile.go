// Package keyfile owns what longlink's three key files have in common: the
// token keys (auth, keys.json), the Noise server static keys (secure,
// server-keys.json) and the fleet signing keys (fleet, fleet-keys.json).
// Each is JSON, {"active": N, "keys": [{"id": N, "<field>": "<hex>"}, ...]}:
// keys with uint32 ids, one of them active. This package parses and checks
// that form, rotates (a new random key with the next id becomes active) and
// retires keys (any but the active one), reads a file only if no group or
// other may access it, and writes one atomically with mode 0600, so a
// running gateway reloading it (SIGHUP) sees the old file or the new one,
// never half of one. What a secret is for, and checks on the key material
// itself, stay with the owning package, which builds its own key type from
// a Set. A Format and a Set are values: every function is safe for
// concurrent use, and Rotate and Retire return new Sets.
package keyfile

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"
)

// Key is one key of a file: its id and its secret bytes.
type Key struct {
	ID      uint32
	Secret  []byte
	Created string // RFC 3339 UTC, written only when set (token keys)
}

// Set is a key file's content: its keys, in the file's order, and the
// active id.
type Set struct {
	Active uint32
	Keys   []Key
}

// IDs returns the key ids, in the set's order.
func (s Set) IDs() []uint32 {
	ids := make([]uint32, len(s.Keys))
	for i, k := range s.Keys {
		ids[i] = k.ID
	}
	return ids
}

// Key returns the key with id.
func (s Set) Key(id uint32) (Key, bool) {
	for _, k := range s.Keys {
		if k.ID == id {
			return k, true
		}
	}
	return Key{}, false
}

// NextID is the id a rotation gives its new key: one past the highest (1
// for an empty set).
func (s Set) NextID() uint32 {
	next := uint32(1)
	for _, k := range s.Keys {
		next = max(next, k.ID+1)
	}
	return next
}

// Format is what differs between the key files.
type Format struct {
	Owner   string // the owning package: every error starts "<Owner>: "
	Field   string // each key's JSON field holding the hex secret: "secret" or "private"
	Noun    string // what the secret is called in errors: "secret", "private key"
	Size    int    // exact secret length in bytes (0: any length of at least MinSize)
	MinSize int    // with Size 0: the shortest secret accepted
	NoZero  bool   // id 0 is reserved, not a key id
	Stamp   bool   // new keys carry their creation time ("created")
}

// fileJSON is the on-disk form. Field order matches what the owning
// packages always wrote, so files written before and after are alike.
type fileJSON struct {
	Active uint32    `json:"active"`
	Keys   []keyJSON `json:"keys"`
}

type keyJSON struct {
	ID      uint32 `json:"id"`
	Secret  string `json:"secret,omitempty"`  // token keys
	Private string `json:"private,omitempty"` // server and fleet keys
	Created string `json:"created,omitempty"`
}

// hexField is the key's secret field of f.
func (f Format) hexField(k *keyJSON) *string {
	if f.Field == "secret" {
		return &k.Secret
	}
	return &k.Private
}

func (f Format) errorf(format string, args ...any) error {
	return fmt.Errorf(f.Owner+": "+format, args...)
}

// Check checks a set's structure: at least one key, ids unique (and not 0
// with NoZero), secrets of the format's size, the active key among them.
func (f Format) Check(s Set) error {
	if err := f.check(s); err != nil {
		return f.errorf("%w", err)
	}
	return nil
}

// check is Check without the owner's prefix.
func (f Format) check(s Set) error {
	if len(s.Keys) == 0 {
		return errors.New("no keys")
	}
	seen := make(map[uint32]bool, len(s.Keys))
	for _, k := range s.Keys {
		switch {
		case k.ID == 0 && f.NoZero:
			return errors.New("key id 0 is reserved")
		case seen[k.ID]:
			return fmt.Errorf("key id %d listed twice", k.ID)
		case f.Size > 0 && len(k.Secret) != f.Size:
			return fmt.Errorf("key %d: the %s must be %d bytes (%d hex digits)", k.ID, f.Noun, f.Size, 2*f.Size)
		case f.Size == 0 && len(k.Secret) < f.MinSize:
			return fmt.Errorf("key %d: the %s is shorter than %d bytes", k.ID, f.Noun, f.MinSize)
		}
		seen[k.ID] = true
	}
	if !seen[s.Active] {
		return fmt.Errorf("active key %d is not among the keys", s.Active)
	}
	return nil
}

// Parse decodes and checks a key file's content.
func (f Format) Parse(b []byte) (Set, error) {
	s, err := f.parse(b)
	if err != nil {
		return Set{}, f.errorf("%w", err)
	}
	return s, nil
}

// parse is Parse without the owner's prefix.
func (f Format) parse(b []byte) (Set, error) {
	var fj fileJSON
	if err := json.Unmarshal(b, &fj); err != nil {
		return Set{}, err
	}
	s := Set{Active: fj.Active, Keys: make([]Key, 0, len(fj.Keys))}
	for i := range fj.Keys {
		kj := &fj.Keys[i]
		secret, err := hex.DecodeString(*f.hexField(kj))
		if err != nil {
			return Set{}, fmt.Errorf("key %d: the %s is not hex", kj.ID, f.Noun)
		}
		s.Keys = append(s.Keys, Key{ID: kj.ID, Secret: secret, Created: kj.Created})
	}
	if err := f.check(s); err != nil {
		return Set{}, err
	}
	return s, nil
}

// Marshal encodes a set in the file's form (indented, a final newline),
// keys in the set's order.
func (f Format) Marshal(s Set) ([]byte, error) {
	if err := f.Check(s); err != nil {
		return nil, err
	}
	fj := fileJSON{Active: s.Active, Keys: make([]keyJSON, len(s.Keys))}
	for i, k := range s.Keys {
		fj.Keys[i] = keyJSON{ID: k.ID, Created: k.Created}
		*f.hexField(&fj.Keys[i]) = hex.EncodeToString(k.Secret)
	}
	b, err := json.MarshalIndent(fj, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Load reads and checks a key file (see ReadSecret). A missing file's error
// is the os error naming the path (it matches os.ErrNotExist); every other
// error names the path too.
func (f Format) Load(path string) (Set, error) {
	b, err := ReadSecret(path)
	if errors.Is(err, os.ErrNotExist) {
		return Set{}, err
	}
	if err != nil {
		return Set{}, f.errorf("%w", err)
	}
	s, err := f.parse(b)
	if err != nil {
		return Set{}, f.errorf("%s: %w", path, err)
	}
	return s, nil
}

// Save writes s to path atomically with mode 0600 (see WriteAtomic),
// replacing the file there; the directory is made (0700) if missing.
func (f Format) Save(path string, s Set) error {
	b, err := f.Marshal(s)
	if err != nil {
		return err
	}
	return WriteAtomic(path, b, false, nil)
}

// Create writes s to a new file at path, like Save, but fails (matching
// os.ErrExist) if there is a file there already.
func (f Format) Create(path string, s Set) error {
	b, err := f.Marshal(s)
	if err != nil {
		return err
	}
	return WriteAtomic(path, b, true, nil)
}

// New returns a set of one new random key, id 1, active (rng nil:
// crypto/rand).
func (f Format) New(rng io.Reader) (Set, error) { return f.Rotate(Set{}, rng) }

// Rotate returns s with a new random key (rng nil: crypto/rand) of the next
// id, which becomes the active one; the older keys stay.
func (f Format) Rotate(s Set, rng io.Reader) (Set, error) {
	if rng == nil {
		rng = rand.Reader
	}
	k := Key{ID: s.NextID(), Secret: make([]byte, max(f.Size, f.MinSize, 32))}
	if _, err := io.ReadFull(rng, k.Secret); err != nil {
		return Set{}, f.errorf("new key: %w", err)
	}
	if f.Stamp {
		k.Created = time.Now().UTC().Format(time.RFC3339)
	}
	return Set{Active: k.ID, Keys: append(slices.Clone(s.Keys), k)}, nil
}

// Retire returns s without key id; the active key cannot be retired.
func (f Format) Retire(s Set, id uint32) (Set, error) {
	if id == s.Active {
		return Set{}, f.errorf("key %d is active: rotate first", id)
	}
	keys := slices.DeleteFunc(slices.Clone(s.Keys), func(k Key) bool { return k.ID == id })
	if len(keys) == len(s.Keys) {
		return Set{}, f.errorf("no key %d", id)
	}
	return Set{Active: s.Active, Keys: keys}, nil
}

// LoadOrCreate loads path, or creates it with one new key (New) if there
// is no file there; created reports which. A file another process creates
// meanwhile is loaded, not overwritten.
func (f Format) LoadOrCreate(path string) (s Set, created bool, err error) {
	s, err = f.Load(path)
	if !errors.Is(err, os.ErrNotExist) {
		return s, false, err
	}
	if s, err = f.New(nil); err != nil {
		return Set{}, false, err
	}
	if err = f.Create(path, s); errors.Is(err, os.ErrExist) {
		s, err = f.Load(path)
		return s, false, err
	}
	if err != nil {
		return Set{}, false, f.errorf("create key file: %w", err)
	}
	return s, true, nil
}
