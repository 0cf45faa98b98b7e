package shake

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A sealed ticket is what SHAKE hands to a client: the dispensed record
// bound to the user, the issue time and the issuing instance, encrypted and
// authenticated with AES-128-GCM under a seal key that only the gateways
// and openers hold. SealedSize bytes:
//
//	off len  field
//	  0   1  seal key id (selects the key; also the GCM additional data)
//	  1  12  nonce: instance (2, LE) | boot salt (2) | counter (8, LE)
//	 13  32  ciphertext of the plaintext below
//	 45  16  GCM tag
//
// Plaintext (32 bytes, two AES blocks):
//
//	 0  18  record (key id + AES ticket, as in the ticket file)
//	18   8  uid, LE
//	26   4  issue time, unix seconds, LE
//	30   2  issuing instance, LE (equal to the nonce's)
//
// Forgery: GCM's tag is a Carter–Wegman MAC (GHASH, keyed by AES_K(0)) over
// the additional data and ciphertext; any sealed ticket not produced by a
// key holder is accepted with probability at most about (ℓ+1)/2^128 ≈ 2^-126
// per attempt for our ℓ = 3 blocks. So the client can neither change the
// uid (transfer), the time (extend) nor the record (amount) inside it. The
// inner record is still an encode-then-encipher ticket (2^-44 per forged
// record) and must pass the Checker, so a forged seal would also need a
// valid record.
//
// Nonces must never repeat under one key. The counter grows by one per
// seal and starts above both the wall clock in nanoseconds and a persisted
// high-water mark (OpenSealer): the mark file always holds a value above
// every counter handed out, because counters are reserved ahead in blocks
// (the file is written and fsync'd, then the block is used), so a restart
// after the clock stepped back still starts above every counter its
// predecessor used, with no I/O per seal. The instance id separates
// instances; the random salt guards against two processes configured with
// the same instance id. Sealing costs one GCM seal of 32 bytes (≈75–90 ns
// here, no HMAC) and allocates nothing.
const (
	SealedSize = 1 + sealNonce + sealPlain + sealTag
	sealNonce  = 12
	sealPlain  = 32
	sealTag    = 16
	sealHdr    = 1 + sealNonce
)

// Errors of Unseal and Verifier.Verify; match with errors.Is.
var (
	// ErrSealInvalid: not a sealed ticket of ours (forged, altered, wrong
	// size or unknown seal key).
	ErrSealInvalid = errors.New("shake: sealed ticket fails authentication")
	// ErrNotYours: the ticket was dispensed to another user.
	ErrNotYours = errors.New("shake: ticket was dispensed to another user")
	// ErrExpired: the ticket is older than the opening deadline (or from the future).
	ErrExpired = errors.New("shake: ticket expired")
)

// SealKeys are the AEADs of the seal key store by seal key id (0..255).
// Immutable; safe for concurrent use.
type SealKeys struct {
	aeads [256]cipher.AEAD
	top   int // highest id present, the one new tickets are sealed with
}

// NewSealKeys builds seal keys from a key store (ids above 255 are
// rejected). The store is the same format as the ticket keys (shake keys
// -n N) but must be a separate directory.
func NewSealKeys(ks *KeyStore) (*SealKeys, error) {
	sk := &SealKeys{top: -1}
	for id, blk := range ks.blocks {
		if blk == nil {
			continue
		}
		if id > 255 {
			return nil, fmt.Errorf("seal key id %d: at most 255", id)
		}
		g, err := cipher.NewGCM(blk)
		if err != nil {
			return nil, err
		}
		sk.aeads[id] = g
		sk.top = id
	}
	if sk.top < 0 {
		return nil, errors.New("seal key store is empty")
	}
	return sk, nil
}

// RandomSealKeys returns n fresh seal keys (tests, benchmarks).
func RandomSealKeys(n int) (*SealKeys, error) {
	ks, err := RandomKeyStore(n)
	if err != nil {
		return nil, err
	}
	return NewSealKeys(ks)
}

// Sealer seals dispensed records for one instance. Seal is goroutine-safe
// (an atomic counter) and does not allocate.
type Sealer struct {
	sk       *SealKeys
	aead     cipher.AEAD
	kid      byte
	instance uint16
	salt     [2]byte
	ctr      atomic.Uint64 // last nonce counter handed out
	soft     atomic.Uint64 // past this, reserve the next block in the background
	limit    atomic.Uint64 // counters below this are covered by the mark file

	// The persisted high-water mark (nil without OpenSealer).
	mark     string
	block    uint64
	mu       sync.Mutex  // serialises mark writes
	busy     atomic.Bool // a background reservation is running
	failedAt atomic.Int64
	log      *slog.Logger
}

// sealBlock is how many counters one mark write reserves: 2^30, about a
// second of the nanosecond clock, so a restart wastes little and a gateway
// sealing a million tickets a second writes the mark every ~18 minutes.
const sealBlock = 1 << 30

// NewSealer seals with the highest key id of keys, for instance, with its
// counter starting at the wall clock and nothing persisted: a restart is
// safe only if the clock never steps back. Gateways use OpenSealer.
func NewSealer(keys *SealKeys, instance uint16) *Sealer {
	s := newSealer(keys, instance)
	s.ctr.Store(uint64(time.Now().UnixNano()))
	s.soft.Store(math.MaxUint64)
	s.limit.Store(math.MaxUint64)
	return s
}

func newSealer(keys *SealKeys, instance uint16) *Sealer {
	s := &Sealer{sk: keys, aead: keys.aeads[keys.top], kid: byte(keys.top), instance: instance, log: slog.Default()}
	_, _ = rand.Read(s.salt[:])
	return s
}

// OpenSealer is NewSealer with the nonce counter's high-water mark kept in
// markFile (created if absent, in a directory made 0700 if needed): the
// counter starts above max(wall clock, mark), and the first block is
// reserved (written and fsync'd) before it returns. A mark file that
// cannot be read or parsed is an error, never a silent restart from the
// clock.
func OpenSealer(keys *SealKeys, instance uint16, markFile string) (*Sealer, error) {
	return openSealer(keys, instance, markFile, time.Now(), sealBlock)
}

func openSealer(keys *SealKeys, instance uint16, markFile string, now time.Time, block uint64) (*Sealer, error) {
	s := newSealer(keys, instance)
	s.mark, s.block = markFile, block
	var mark uint64
	switch data, err := os.ReadFile(markFile); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("seal nonce mark: %w", err)
	default:
		if mark, err = strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64); err != nil {
			return nil, fmt.Errorf("seal nonce mark %s is corrupt: it must hold one decimal number above every nonce counter used (never remove or lower it)", markFile)
		}
	}
	if err := os.MkdirAll(filepath.Dir(markFile), 0o700); err != nil {
		return nil, err
	}
	start := max(uint64(now.UnixNano()), mark)
	s.ctr.Store(start)
	s.limit.Store(start + 1) // nothing reserved yet
	if err := s.reserve(start); err != nil {
		return nil, err
	}
	return s, nil
}

// nonce returns the next counter, or false if none is reserved and the mark
// cannot be written (fail closed: a nonce not covered by the mark could be
// reused after a crash and a clock step back).
func (s *Sealer) nonce() (uint64, bool) {
	c := s.ctr.Add(1)
	if c < s.soft.Load() {
		return c, true
	}
	return c, s.nonceSlow(c)
}

func (s *Sealer) nonceSlow(c uint64) bool {
	if c < s.limit.Load() { // still covered: reserve the next block off the hot path
		if s.busy.CompareAndSwap(false, true) {
			go func() {
				defer s.busy.Store(false)
				if err := s.reserve(c); err != nil {
					s.log.Error("shake: cannot persist the seal nonce mark; sealing stops when the reserved block runs out", "file", s.mark, "err", err)
				}
			}()
		}
		return true
	}
	// Out of reserved counters: reserve now, but after a failure retry at
	// most once a second rather than on every seal.
	if t := s.failedAt.Load(); t != 0 && time.Since(time.Unix(0, t)) < time.Second {
		return false
	}
	err := s.reserve(c)
	if err != nil {
		s.failedAt.Store(time.Now().UnixNano())
		s.log.Error("shake: cannot persist the seal nonce mark; refusing to seal", "file", s.mark, "err", err)
	}
	return err == nil
}

// reserve makes every counter up to c (and a block beyond) covered by the
// mark file: written durably first, then published to the hot path.
func (s *Sealer) reserve(c uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	lim := s.limit.Load()
	if c+s.block/2 < lim {
		return nil // someone else reserved meanwhile
	}
	next := max(lim, c+1) + s.block
	if err := writeFileDurable(s.mark, []byte(strconv.FormatUint(next, 10)+"\n"), 0o600); err != nil {
		return fmt.Errorf("seal nonce mark: %w", err)
	}
	s.limit.Store(next)
	s.soft.Store(next - s.block/2)
	s.failedAt.Store(0)
	return nil
}

func (s *Sealer) keys() *SealKeys { return s.sk }

// Instance returns the sealer's instance id.
func (s *Sealer) Instance() uint16 { return s.instance }

// AppendSealed appends the SealedSize-byte sealed ticket for rec (a
// RecordSize-byte record), uid and the issue time. It seals in place in
// dst's spare capacity, so with cap(dst)-len(dst) ≥ SealedSize it does not
// allocate. It returns dst unchanged if no nonce can be had (the mark file
// of OpenSealer cannot be written): never seal with an unreserved nonce.
func (s *Sealer) AppendSealed(dst []byte, rec []byte, uid uint64, issued uint32) []byte {
	_ = rec[RecordSize-1]
	ctr, ok := s.nonce()
	if !ok {
		return dst
	}
	off := len(dst)
	dst = grow(dst, SealedSize)
	b := dst[off : off+SealedSize]
	le := binary.LittleEndian
	b[0] = s.kid
	le.PutUint16(b[1:], s.instance)
	b[3], b[4] = s.salt[0], s.salt[1]
	le.PutUint64(b[5:], ctr)
	p := b[sealHdr : sealHdr+sealPlain]
	copy(p, rec[:RecordSize])
	le.PutUint64(p[18:], uid)
	le.PutUint32(p[26:], issued)
	le.PutUint16(p[30:], s.instance)
	// Seal in place: the output starts exactly where the plaintext is.
	s.aead.Seal(b[sealHdr:sealHdr], b[1:sealHdr], p, b[:1])
	return dst
}

func grow(b []byte, n int) []byte {
	if cap(b)-len(b) < n {
		nb := make([]byte, len(b), 2*cap(b)+n)
		copy(nb, b)
		b = nb
	}
	return b[:len(b)+n]
}

// Unsealed is the content of an authenticated sealed ticket.
type Unsealed struct {
	Record   [RecordSize]byte
	UID      uint64
	Issued   uint32 // unix seconds
	Instance uint16
	SealKey  byte
}

// Unseal authenticates and decrypts a sealed ticket. scratch must hold at
// least SealedSize bytes; sealed is not modified. The only error is
// ErrSealInvalid.
func (k *SealKeys) Unseal(sealed []byte, scratch []byte) (Unsealed, error) {
	var u Unsealed
	if len(sealed) != SealedSize || len(scratch) < SealedSize {
		return u, ErrSealInvalid
	}
	g := k.aeads[sealed[0]]
	if g == nil {
		return u, ErrSealInvalid
	}
	p, err := g.Open(scratch[:0], sealed[1:sealHdr], sealed[sealHdr:], sealed[:1])
	if err != nil || len(p) != sealPlain {
		return u, ErrSealInvalid
	}
	le := binary.LittleEndian
	copy(u.Record[:], p[:RecordSize])
	u.UID = le.Uint64(p[18:])
	u.Issued = le.Uint32(p[26:])
	u.Instance = le.Uint16(p[30:])
	u.SealKey = sealed[0]
	if u.Instance != le.Uint16(sealed[1:]) {
		return Unsealed{}, ErrSealInvalid // cannot happen without the key
	}
	return u, nil
}

// Opened is a verified OPEN: the ticket and its binding.
type Opened struct {
	Ticket
	UID      uint64
	Issued   uint32
	Instance uint16
}

// Verifier is OPEN's local computation: unseal, check the user binding and
// the expiry, decrypt the ticket, check its key against the whitelist and
// blacklist (replaceable at runtime with SetKeyPolicy) and the plan. Safe
// for concurrent use.
type Verifier struct {
	seal *SealKeys
	plan *Plan
	keys *KeyStore
	ttl  time.Duration
	skew time.Duration
	chk  atomic.Pointer[Checker]
	pol  atomic.Pointer[keyPolicy]
}

type keyPolicy struct{ Allow, Deny []uint16 }

// NewVerifier returns a verifier accepting tickets sealed at most ttl ago
// (and at most skew in the future, for clock differences between
// instances).
func NewVerifier(seal *SealKeys, plan *Plan, keys *KeyStore, ttl, skew time.Duration, allow, deny []uint16) *Verifier {
	v := &Verifier{seal: seal, plan: plan, keys: keys, ttl: ttl, skew: skew}
	v.SetKeyPolicy(allow, deny)
	return v
}

// Plan returns the verifier's plan.
func (v *Verifier) Plan() *Plan { return v.plan }

// SetKeyPolicy replaces the ticket-key whitelist (empty: every known key)
// and blacklist. Opens already past the check are not affected.
func (v *Verifier) SetKeyPolicy(allow, deny []uint16) {
	p := &keyPolicy{Allow: append([]uint16(nil), allow...), Deny: append([]uint16(nil), deny...)}
	v.chk.Store(NewChecker(v.plan, v.keys, p.Allow, p.Deny))
	v.pol.Store(p)
}

// KeyPolicy returns the whitelist and blacklist in force.
func (v *Verifier) KeyPolicy() (allow, deny []uint16) {
	p := v.pol.Load()
	return p.Allow, p.Deny
}

// Verify checks a sealed ticket presented by uid at now. Errors:
// ErrSealInvalid, ErrNotYours, ErrExpired, and the Checker's
// ErrUnknownKey, ErrKeyBlacklisted, ErrKeyNotAllowed, ErrBadTicket.
func (v *Verifier) Verify(sealed []byte, uid uint64, now time.Time) (Opened, error) {
	var scratch [SealedSize]byte
	u, err := v.seal.Unseal(sealed, scratch[:])
	if err != nil {
		return Opened{}, err
	}
	if u.UID != uid {
		return Opened{}, ErrNotYours
	}
	issued := time.Unix(int64(u.Issued), 0)
	if now.Sub(issued) > v.ttl || issued.Sub(now) > v.skew {
		return Opened{}, ErrExpired
	}
	op := Opener{c: v.chk.Load()}
	t, err := op.Open(u.Record[:])
	if err != nil {
		return Opened{}, err
	}
	return Opened{Ticket: t, UID: u.UID, Issued: u.Issued, Instance: u.Instance}, nil
}
