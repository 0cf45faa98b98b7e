package secure

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"reflect"
	"sync"
	"unsafe"

	"golang.org/x/crypto/chacha20poly1305"
)

// Record limits: a connection closes (ErrExhausted, code 3012) once either
// direction has used this many nonces, far below the 2^64-1 Noise allows.
// AES-GCM follows TLS 1.3's per-key limit (RFC 8446 §5.5, 2^24.5 records);
// ChaCha20-Poly1305 has no practical bound: 2^31 records each way (68 years
// of a record a second) lets the counters be 32 bits, which keeps State in
// the 80-byte size class, with 2^31 records of margin before they could wrap.
var recordLimit = [3]uint32{SuiteChaChaPoly: 1 << 31, SuiteAESGCM: 1 << 24}

// State is one connection's record layer after the handshake: the two
// transport keys and their nonce counters, nothing else (64+8+8 bytes: the
// 80-byte size class; the rarely negotiated AES suite adds its expanded
// ciphers, and its presence is the suite). It is not safe for concurrent
// use: the gateway touches it only on the connection's loop.
type State struct {
	sendKey, recvKey [32]byte
	sendN, recvN     uint32
	aes              *aesPair // SuiteAESGCM only
}

// aesPair keeps the expanded AES keys: rebuilding them per record would cost
// a key schedule and two allocations each time.
type aesPair struct{ send, recv cipher.AEAD }

func newState(suite uint8, send, recv [32]byte) (*State, error) {
	st := &State{sendKey: send, recvKey: recv}
	if suite == SuiteAESGCM {
		s, err := newGCM(send)
		if err != nil {
			return nil, err
		}
		r, err := newGCM(recv)
		if err != nil {
			return nil, err
		}
		st.aes = &aesPair{s, r}
		// The AEADs hold the keys; the copies here are not used.
		st.sendKey, st.recvKey = [32]byte{}, [32]byte{}
	}
	return st, nil
}

func newGCM(k [32]byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(k[:])
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// Suite returns the negotiated cipher suite.
func (s *State) Suite() uint8 {
	if s.aes != nil {
		return SuiteAESGCM
	}
	return SuiteChaChaPoly
}

// Counters returns the number of records sealed and opened so far.
func (s *State) Counters() (sent, received uint64) { return uint64(s.sendN), uint64(s.recvN) }

// Exhausted reports whether either counter reached the suite's limit: the
// connection must close (after one last record) and the client reconnect.
func (s *State) Exhausted() bool {
	lim := recordLimit[s.Suite()]
	return s.sendN >= lim || s.recvN >= lim
}

// scratch is borrowed per Seal/Open from a pool: the nonce passed through
// the cipher.AEAD interface would escape (an allocation per record) if it
// lived on the stack, and the ChaCha AEAD is re-keyed per call (below).
type scratch struct {
	nonce [12]byte
	cc    cipher.AEAD // ChaCha20-Poly1305, key written per call
}

var scratchPool = sync.Pool{New: func() any {
	a, err := chacha20poly1305.New(make([]byte, 32))
	if err != nil {
		panic(err)
	}
	return &scratch{cc: a}
}}

// get borrows a scratch with the nonce for counter n set (Noise's nonce: 4
// zero bytes, then the counter, little-endian for ChaChaPoly and big-endian
// for AESGCM) and, for ChaChaPoly, returns the AEAD keyed with k.
func (s *State) get(n uint32, k *[32]byte) (*scratch, cipher.AEAD) {
	sc := scratchPool.Get().(*scratch)
	if s.aes != nil {
		binary.BigEndian.PutUint64(sc.nonce[4:], uint64(n))
		return sc, nil
	}
	binary.LittleEndian.PutUint64(sc.nonce[4:], uint64(n))
	if !chachaRekeyable {
		a, err := chacha20poly1305.New(k[:])
		if err != nil {
			panic(err)
		}
		return sc, a
	}
	*chachaKey(sc.cc) = *k
	return sc, sc.cc
}

func put(sc *scratch) {
	*chachaKey(sc.cc) = [32]byte{} // no key material left in the pool
	scratchPool.Put(sc)
}

// Seal appends one record carrying frame (a whole longlink frame: header and
// body) to dst: a u24 length, then the frame sealed with the next send nonce,
// the length bytes as associated data. It does not allocate when dst has
// room for len(frame)+Overhead more bytes.
func (s *State) Seal(dst, frame []byte) []byte {
	if s.sendN == ^uint32(0) { // never reached: Exhausted closes long before
		panic("secure: send nonce space exhausted")
	}
	n := len(frame) + TagSize
	off := len(dst)
	dst = append(dst, byte(n>>16), byte(n>>8), byte(n))
	ad := dst[off : off+RecordHeader]
	sc, a := s.get(s.sendN, &s.sendKey)
	s.sendN++
	if s.aes != nil {
		a = s.aes.send
	}
	dst = a.Seal(dst, sc.nonce[:], frame, ad)
	put(sc)
	return dst
}

// Open decrypts the record at the start of buf in place and returns the
// frame it carried (aliasing buf) and the record's size. n == 0 with a nil
// error means buf holds only part of a record. maxFrame bounds the frame
// (header plus body). Any failure (a flipped bit anywhere, a record out of
// order, replayed, or cut and completed with other bytes) is ErrRecord and
// leaves the counter unchanged; the caller closes the connection. buf's
// record bytes are overwritten either way.
func (s *State) Open(buf []byte, maxFrame int) (frame []byte, n int, err error) {
	if len(buf) < RecordHeader {
		return nil, 0, nil
	}
	l := int(buf[0])<<16 | int(buf[1])<<8 | int(buf[2])
	if l < TagSize {
		return nil, 0, ErrRecord
	}
	if l-TagSize > maxFrame {
		return nil, 0, ErrTooLarge
	}
	end := RecordHeader + l
	if len(buf) < end {
		return nil, 0, nil
	}
	if s.recvN == ^uint32(0) {
		return nil, 0, ErrExhausted
	}
	ct := buf[RecordHeader:end]
	ad := buf[:RecordHeader]
	sc, a := s.get(s.recvN, &s.recvKey)
	if s.aes != nil {
		a = s.aes.recv
	}
	frame, err = a.Open(ct[:0], sc.nonce[:], ct, ad)
	put(sc)
	if err != nil {
		return nil, 0, ErrRecord
	}
	s.recvN++
	return frame, end, nil
}

// ChaCha20-Poly1305 without an allocation per record. x/crypto's New
// allocates its 32-byte key struct on every call and the AEAD cannot be
// re-keyed, while keeping one AEAD per direction per connection costs two
// heap objects and two interface words per connection. So the key lives in
// State, and each Seal/Open borrows a pooled AEAD (in scratch) and writes the
// key into it
// (the struct is exactly the key: checked by reflection at init and by a
// known-answer self-test; if either fails, every call uses New instead and
// allocates). The measurements are in BenchmarkChaCha*.
var chachaRekeyable = checkChaChaLayout()

type iface struct{ typ, data unsafe.Pointer }

func chachaKey(a cipher.AEAD) *[32]byte {
	return (*[32]byte)((*iface)(unsafe.Pointer(&a)).data)
}

func checkChaChaLayout() bool {
	a, err := chacha20poly1305.New(make([]byte, 32))
	if err != nil {
		return false
	}
	t := reflect.TypeOf(a)
	if t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.Struct || t.Elem().Size() != 32 ||
		t.Elem().NumField() != 1 || t.Elem().Field(0).Type != reflect.TypeOf([32]byte{}) {
		return false
	}
	var k [32]byte
	for i := range k {
		k[i] = byte(i * 7)
	}
	ref, _ := chacha20poly1305.New(k[:])
	nc := make([]byte, 12)
	want := ref.Seal(nil, nc, []byte("longlink self-test"), nil)
	*chachaKey(a) = k
	got := a.Seal(nil, nc, []byte("longlink self-test"), nil)
	return string(got) == string(want)
}
