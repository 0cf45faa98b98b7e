package shake

import (
	"crypto/cipher"
	"encoding/binary"
)

// The ticket is one AES-128 block. Its 128-bit plaintext, as two
// little-endian uint64 words lo and hi:
//
//	lo bits  0..39  packet id        (40 bits: 1.1e12 packets per plan)
//	lo bits 40..63  amount in fen    (24 bits: up to ¥167,772.15)
//	hi bits  0..19  batch id         (20 bits: 1,048,576 batches)
//	hi bits 20..35  key id           (16 bits: 65,536 keys)
//	hi bits 36..63  plan tag         (28 bits, fixed per generation)
//
// A record is the key id in clear (to pick the key) followed by the
// ciphertext:
//
//	off 0  uint16 LE  key id
//	off 2  [16]byte   AES-128(key[key id], plaintext)
//
// Integrity is encode-then-encipher: AES is a pseudorandom permutation, so
// any record not produced with the key decrypts to 128 bits that look
// uniformly random; it is accepted only if the inner key id equals the
// outer one and the tag equals the plan's: 44 fixed bits, so a forgery
// passes with probability 2^-44 per attempt (≈5.7e-14), before the further
// checks that the batch exists, the packet id lies in it and the amount in
// its bounds. Flipping any bit of a record changes the key or the
// ciphertext and so re-randomises the whole plaintext.
const (
	pidBits    = 40
	amountBits = 24
	batchBits  = 20
	kidBits    = 16
	tagBits    = 28
	tagMask    = 1<<tagBits - 1

	// RecordSize is the size of one record in a ticket file.
	RecordSize = 2 + 16
)

// Ticket is a decrypted, verified ticket.
type Ticket struct {
	PacketID uint64
	Amount   Money
	Batch    uint32
	Key      uint16
}

// RecordKeyID returns the clear key id of a record.
func RecordKeyID(rec []byte) uint16 { return binary.LittleEndian.Uint16(rec[:2]) }

func packTicket(pid uint64, amount Money, batch uint32, kid uint16, tag uint32) (lo, hi uint64) {
	lo = pid | uint64(amount)<<pidBits
	hi = uint64(batch) | uint64(kid)<<batchBits | uint64(tag)<<(batchBits+kidBits)
	return
}

// sealRecord encrypts the plaintext words into dst (RecordSize bytes);
// pt is scratch space (kept off the stack by the caller: a slice passed to
// an interface method escapes).
func sealRecord(dst []byte, pt *[16]byte, blk cipher.Block, kid uint16, lo, hi uint64) {
	binary.LittleEndian.PutUint64(pt[:8], lo)
	binary.LittleEndian.PutUint64(pt[8:], hi)
	binary.LittleEndian.PutUint16(dst[:2], kid)
	blk.Encrypt(dst[2:18], pt[:])
}

// Checker decrypts and verifies records of one plan against a key store
// and a key policy. Immutable; safe for concurrent use; Open does not
// allocate.
type Checker struct {
	plan    *Plan
	keys    *KeyStore
	denied  []bool // by key id
	allowed []bool // nil: every known key is allowed
}

// NewChecker returns a Checker for plan with keys. Records under a key id
// in deny are rejected; if allow is non-empty, only its key ids are
// accepted (the decryption library's whitelist and blacklist).
func NewChecker(plan *Plan, keys *KeyStore, allow, deny []uint16) *Checker {
	c := &Checker{plan: plan, keys: keys, denied: make([]bool, MaxKeys)}
	for _, k := range deny {
		c.denied[k] = true
	}
	if len(allow) > 0 {
		c.allowed = make([]bool, MaxKeys)
		for _, k := range allow {
			c.allowed[k] = true
		}
	}
	return c
}

// Plan returns the checker's plan.
func (c *Checker) Plan() *Plan { return c.plan }

// Opener verifies records for one goroutine: it owns the scratch block
// that keeps Open free of allocations. Not safe for concurrent use; make
// one per goroutine (or event loop) with NewOpener.
type Opener struct {
	c   *Checker
	buf [32]byte
}

// NewOpener returns an Opener bound to c.
func (c *Checker) NewOpener() *Opener { return &Opener{c: c} }

// Open decrypts rec (RecordSize bytes) and verifies it: key known and
// allowed, inner key id and plan tag intact, batch, packet id and amount
// consistent with the plan. Errors are ErrUnknownKey, ErrKeyBlacklisted,
// ErrKeyNotAllowed or ErrBadTicket. It does not allocate.
func (o *Opener) Open(rec []byte) (Ticket, error) {
	c := o.c
	_ = rec[RecordSize-1]
	kid := binary.LittleEndian.Uint16(rec[:2])
	blk := c.keys.block(kid)
	switch {
	case blk == nil:
		return Ticket{}, ErrUnknownKey
	case c.denied[kid]:
		return Ticket{}, ErrKeyBlacklisted
	case c.allowed != nil && !c.allowed[kid]:
		return Ticket{}, ErrKeyNotAllowed
	}
	copy(o.buf[:16], rec[2:18])
	blk.Decrypt(o.buf[16:], o.buf[:16])
	lo := binary.LittleEndian.Uint64(o.buf[16:24])
	hi := binary.LittleEndian.Uint64(o.buf[24:32])
	t := Ticket{
		PacketID: lo & (1<<pidBits - 1),
		Amount:   Money(lo >> pidBits),
		Batch:    uint32(hi & (1<<batchBits - 1)),
		Key:      uint16(hi >> batchBits),
	}
	if t.Key != kid || uint32(hi>>(batchBits+kidBits)) != c.plan.Tag || int(t.Batch) >= len(c.plan.Batches) {
		return Ticket{}, ErrBadTicket
	}
	b := &c.plan.Batches[t.Batch]
	if t.PacketID < b.FirstPacket || t.PacketID-b.FirstPacket >= b.Count || t.Amount < b.Min || t.Amount > b.Max {
		return Ticket{}, ErrBadTicket
	}
	return t, nil
}
