package fleet

import (
	"cmp"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/longlink/longlink/internal/keyfile"
	"github.com/longlink/longlink/proto/pb"
)

// KeyFile is the fleet signing keys' file name in the data directory.
const KeyFile = "fleet-keys.json"

// signContext prefixes every signed list, so a fleet signature can never be
// taken for a signature over anything else.
const signContext = "longlink node list v1"

// SignedMessage is what a fleet key signs for list (a serialized NodeList):
// "longlink node list v1" || 0x00 || list.
func SignedMessage(list []byte) []byte {
	m := make([]byte, 0, len(signContext)+1+len(list))
	m = append(m, signContext...)
	m = append(m, 0)
	return append(m, list...)
}

// SigningKey is one fleet signing key.
type SigningKey struct {
	ID      uint32
	Private ed25519.PrivateKey
}

// Pin is the public half of a fleet key as clients pin it.
type Pin struct {
	ID     uint32
	Public ed25519.PublicKey
}

// String is the pin's text form, "<id>:<64 hex digits>".
func (p Pin) String() string { return fmt.Sprintf("%d:%x", p.ID, []byte(p.Public)) }

// ParsePin reads "<id>:<public key as 64 hex digits>".
func ParsePin(s string) (Pin, error) {
	id, pub, ok := strings.Cut(strings.TrimSpace(s), ":")
	n, err := strconv.ParseUint(id, 10, 32)
	if !ok || err != nil || n == 0 {
		return Pin{}, fmt.Errorf("fleet: pin %q: want <key id>:<64 hex digits>", s)
	}
	b, err := hex.DecodeString(pub)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return Pin{}, fmt.Errorf("fleet: pin %q: the public key must be 64 hex digits", s)
	}
	return Pin{uint32(n), ed25519.PublicKey(b)}, nil
}

// GenerateKey makes a new signing key with id.
func GenerateKey(id uint32) (SigningKey, error) {
	if id == 0 {
		return SigningKey{}, errors.New("fleet: key id 0 is reserved")
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	return SigningKey{id, priv}, err
}

// keyFormat is the fleet key file (and KV entry):
//
//	{"active": 2, "keys": [{"id": 1, "private": "<64 hex seed>"}, ...]}
var keyFormat = keyfile.Format{Owner: "fleet", Field: "private", Noun: "private key", Size: ed25519.SeedSize, NoZero: true}

// KeyRing is the loaded signing keys: the active one signs; the others stay
// listed (Pins) so clients that pinned them keep a way to rotate.
type KeyRing struct {
	active uint32
	keys   []SigningKey // sorted by id
	file   keyfile.Set  // the keys in the key file's form (seeds)
}

// NewKeyRing checks keys and active.
func NewKeyRing(keys []SigningKey, active uint32) (*KeyRing, error) {
	ks := slices.Clone(keys)
	slices.SortFunc(ks, func(a, b SigningKey) int { return cmp.Compare(a.ID, b.ID) })
	set := keyfile.Set{Active: active, Keys: make([]keyfile.Key, len(ks))}
	for i, k := range ks {
		if len(k.Private) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("fleet: key %d: bad key", k.ID)
		}
		set.Keys[i] = keyfile.Key{ID: k.ID, Secret: k.Private.Seed()}
	}
	if err := keyFormat.Check(set); err != nil {
		return nil, err
	}
	return &KeyRing{active: active, keys: ks, file: set}, nil
}

// Active is the id of the key that signs.
func (r *KeyRing) Active() uint32 { return r.active }

// Keys returns the keys (sorted by id).
func (r *KeyRing) Keys() []SigningKey { return slices.Clone(r.keys) }

// IDs lists the key ids.
func (r *KeyRing) IDs() []uint32 {
	ids := make([]uint32, len(r.keys))
	for i, k := range r.keys {
		ids[i] = k.ID
	}
	return ids
}

// Pins returns every key's pin, the active one first.
func (r *KeyRing) Pins() []Pin {
	var out []Pin
	for _, k := range r.keys {
		p := Pin{k.ID, k.Private.Public().(ed25519.PublicKey)}
		if k.ID == r.active {
			out = append([]Pin{p}, out...)
		} else {
			out = append(out, p)
		}
	}
	return out
}

// Sign signs a serialized NodeList with the active key.
func (r *KeyRing) Sign(list []byte) *pb.SignedNodeList {
	for _, k := range r.keys {
		if k.ID == r.active {
			return &pb.SignedNodeList{List: list, KeyId: k.ID, Signature: ed25519.Sign(k.Private, SignedMessage(list))}
		}
	}
	panic("fleet: active key missing") // NewKeyRing guarantees it
}

// Verification errors.
var (
	ErrUnknownKey   = errors.New("fleet: node list signed by a key that is not pinned")
	ErrBadSignature = errors.New("fleet: node list signature does not verify")
)

// Verify checks a signed list against the pinned keys and decodes it: what
// a client does before it uses a list.
func Verify(sl *pb.SignedNodeList, pins []Pin) (*pb.NodeList, error) {
	if sl == nil {
		return nil, errors.New("fleet: no node list")
	}
	for _, p := range pins {
		if p.ID != sl.KeyId {
			continue
		}
		if !ed25519.Verify(p.Public, SignedMessage(sl.List), sl.Signature) {
			return nil, ErrBadSignature
		}
		var nl pb.NodeList
		if err := unmarshal(sl.List, &nl); err != nil {
			return nil, fmt.Errorf("fleet: node list: %w", err)
		}
		return &nl, nil
	}
	return nil, ErrUnknownKey
}

// MarshalKeys encodes keys in the key file's JSON form.
func MarshalKeys(keys []SigningKey, active uint32) ([]byte, error) {
	r, err := NewKeyRing(keys, active)
	if err != nil {
		return nil, err
	}
	return keyFormat.Marshal(r.file)
}

// ParseKeys decodes the key file's JSON form and checks it.
func ParseKeys(b []byte) (*KeyRing, error) { return fromSet(keyFormat.Parse(b)) }

// fromSet builds the ring of a key file's content as keyFormat returned it
// (Parse, Load, Rotate, ...), or passes its error on.
func fromSet(set keyfile.Set, err error) (*KeyRing, error) {
	if err != nil {
		return nil, err
	}
	keys := make([]SigningKey, len(set.Keys))
	for i, k := range set.Keys {
		keys[i] = SigningKey{k.ID, ed25519.NewKeyFromSeed(k.Secret)}
	}
	return NewKeyRing(keys, set.Active)
}

// LoadKeys reads a key file; it must not be readable by group or others.
func LoadKeys(path string) (*KeyRing, error) { return fromSet(keyFormat.Load(path)) }

// SaveKeys writes a key file atomically with mode 0600.
func SaveKeys(path string, r *KeyRing) error { return keyFormat.Save(path, r.file) }

// LoadOrCreateKeys reads path, creating it with one new key if absent.
func LoadOrCreateKeys(path string) (*KeyRing, bool, error) {
	set, created, err := keyFormat.LoadOrCreate(path)
	if err != nil {
		return nil, false, err
	}
	r, err := fromSet(set, nil)
	return r, created && err == nil, err
}

// Rotate returns a ring with a new active key (the next id) beside the old ones.
func (r *KeyRing) Rotate() (*KeyRing, error) {
	return fromSet(keyFormat.Rotate(r.file, nil))
}

// Retire returns a ring without key id (not the active one).
func (r *KeyRing) Retire(id uint32) (*KeyRing, error) {
	return fromSet(keyFormat.Retire(r.file, id))
}
