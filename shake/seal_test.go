package shake

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

// sealFixture is a generated plan with seal keys and a verifier.
type sealFixture struct {
	g    *generated
	seal *SealKeys
	s    *Sealer
	v    *Verifier
	f    *File
}

func newSealFixture(t testing.TB) *sealFixture {
	t.Helper()
	g := generate(t, smallBudget, "seal")
	sk, err := RandomSealKeys(2)
	if err != nil {
		t.Fatal(err)
	}
	f, err := OpenFile(g.files[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &sealFixture{g: g, seal: sk, s: NewSealer(sk, 3), v: NewVerifier(sk, g.plan, g.keys, time.Hour, time.Minute, nil, nil), f: f}
}

func TestSealRoundTripAndBinding(t *testing.T) {
	fx := newSealFixture(t)
	now := time.Now()
	rec := fx.f.Record(5)
	sealed := fx.s.AppendSealed(nil, rec, 10086, uint32(now.Unix()))
	if len(sealed) != SealedSize {
		t.Fatalf("sealed size %d, want %d", len(sealed), SealedSize)
	}
	if bytes.Contains(sealed, rec[2:]) {
		t.Fatal("the ticket appears in clear inside the sealed ticket")
	}
	u, err := fx.seal.Unseal(sealed, make([]byte, SealedSize))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(u.Record[:], rec) || u.UID != 10086 || u.Instance != 3 || u.Issued != uint32(now.Unix()) || u.SealKey != 1 {
		t.Fatalf("unsealed %+v", u)
	}
	want, err := NewChecker(fx.g.plan, fx.g.keys, nil, nil).NewOpener().Open(rec)
	if err != nil {
		t.Fatal(err)
	}
	op, err := fx.v.Verify(sealed, 10086, now)
	if err != nil {
		t.Fatal(err)
	}
	if op.Ticket != want || op.UID != 10086 || op.Instance != 3 {
		t.Fatalf("verified %+v, want ticket %+v", op, want)
	}
	// Another user cannot open it: the binding is inside the seal.
	if _, err := fx.v.Verify(sealed, 10087, now); !errors.Is(err, ErrNotYours) {
		t.Fatalf("other user: %v, want ErrNotYours", err)
	}
	// Expiry and clock skew.
	if _, err := fx.v.Verify(sealed, 10086, now.Add(61*time.Minute)); !errors.Is(err, ErrExpired) {
		t.Fatalf("after ttl: %v, want ErrExpired", err)
	}
	if _, err := fx.v.Verify(sealed, 10086, now.Add(-2*time.Minute)); !errors.Is(err, ErrExpired) {
		t.Fatalf("from the future: %v, want ErrExpired", err)
	}
}

func TestSealEveryBitFlipRejected(t *testing.T) {
	fx := newSealFixture(t)
	sealed := fx.s.AppendSealed(nil, fx.f.Record(0), 7, uint32(time.Now().Unix()))
	scratch := make([]byte, SealedSize)
	for bit := 0; bit < SealedSize*8; bit++ {
		b := bytes.Clone(sealed)
		b[bit/8] ^= 1 << (bit % 8)
		if _, err := fx.seal.Unseal(b, scratch); !errors.Is(err, ErrSealInvalid) {
			t.Fatalf("flipping bit %d: %v, want ErrSealInvalid", bit, err)
		}
	}
	for _, n := range []int{0, 1, SealedSize - 1, SealedSize + 1} {
		b := make([]byte, n)
		copy(b, sealed)
		if _, err := fx.seal.Unseal(b, scratch); !errors.Is(err, ErrSealInvalid) {
			t.Fatalf("%d bytes: %v", n, err)
		}
	}
	// A key store without the seal keys rejects everything.
	other, _ := RandomSealKeys(2)
	if _, err := other.Unseal(sealed, scratch); !errors.Is(err, ErrSealInvalid) {
		t.Fatalf("other seal keys: %v", err)
	}
}

func TestVerifierKeyPolicyAtRuntime(t *testing.T) {
	fx := newSealFixture(t)
	now := time.Now()
	rec := fx.f.Record(0)
	kid := RecordKeyID(rec)
	sealed := fx.s.AppendSealed(nil, rec, 1, uint32(now.Unix()))
	if _, err := fx.v.Verify(sealed, 1, now); err != nil {
		t.Fatal(err)
	}
	fx.v.SetKeyPolicy(nil, []uint16{kid})
	if _, err := fx.v.Verify(sealed, 1, now); !errors.Is(err, ErrKeyBlacklisted) {
		t.Fatalf("blacklisted: %v", err)
	}
	fx.v.SetKeyPolicy([]uint16{kid + 1}, nil)
	if _, err := fx.v.Verify(sealed, 1, now); !errors.Is(err, ErrKeyNotAllowed) {
		t.Fatalf("not whitelisted: %v", err)
	}
	fx.v.SetKeyPolicy([]uint16{kid}, nil)
	if _, err := fx.v.Verify(sealed, 1, now); err != nil {
		t.Fatalf("whitelisted: %v", err)
	}
	if a, d := fx.v.KeyPolicy(); len(a) != 1 || a[0] != kid || len(d) != 0 {
		t.Fatalf("policy %v %v", a, d)
	}
}

// A seal key alone (say, leaked from a gateway) does not mint money: the
// inner record must still be a ticket of the plan.
func TestSealedForgedRecordRejected(t *testing.T) {
	fx := newSealFixture(t)
	now := time.Now()
	rec := bytes.Clone(fx.f.Record(0))
	rec[10] ^= 0x40 // tamper with the ticket's ciphertext (say, to change the amount)
	sealed := fx.s.AppendSealed(nil, rec, 1, uint32(now.Unix()))
	if _, err := fx.v.Verify(sealed, 1, now); !errors.Is(err, ErrBadTicket) {
		t.Fatalf("tampered record: %v, want ErrBadTicket", err)
	}
	rec[0] ^= 1 // another key id
	sealed = fx.s.AppendSealed(nil, rec, 1, uint32(now.Unix()))
	if _, err := fx.v.Verify(sealed, 1, now); err == nil {
		t.Fatal("record under another key id accepted")
	}
}

func TestSealNoncesUniqueAndNoAllocs(t *testing.T) {
	fx := newSealFixture(t)
	seen := map[string]bool{}
	s2 := NewSealer(fx.seal, 3) // a restart of the same instance
	for i := 0; i < 2000; i++ {
		for _, s := range []*Sealer{fx.s, s2} {
			b := s.AppendSealed(nil, fx.f.Record(i), 1, 1)
			n := string(b[1:sealHdr])
			if seen[n] {
				t.Fatalf("nonce repeated after %d seals", i)
			}
			seen[n] = true
		}
	}
	buf := make([]byte, 0, 128)
	rec := fx.f.Record(1)
	if a := testing.AllocsPerRun(1000, func() { buf = fx.s.AppendSealed(buf[:0], rec, 9, 9) }); a != 0 {
		t.Fatalf("AppendSealed allocates %v times", a)
	}
}

func FuzzUnseal(f *testing.F) {
	sk, err := RandomSealKeys(1)
	if err != nil {
		f.Fatal(err)
	}
	s := NewSealer(sk, 1)
	rec := make([]byte, RecordSize)
	good := s.AppendSealed(nil, rec, 42, 1000)
	f.Add(good)
	f.Add([]byte{})
	f.Add(make([]byte, SealedSize))
	scratch := make([]byte, SealedSize)
	f.Fuzz(func(t *testing.T, b []byte) {
		u, err := sk.Unseal(b, scratch)
		if err == nil && (!bytes.Equal(b, good) || u.UID != 42) {
			t.Fatalf("accepted a sealed ticket nobody sealed: %x", b)
		}
	})
}
