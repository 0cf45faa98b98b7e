package logic

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Store is the logic's persistent storage: per-user change logs with their
// sequence counters, per-user state indexes, and a few global tables. An
// Update that returned nil is durable (it survives kill -9); an Update that
// returned an error changed nothing.
//
// Update may run fn more than once (implementations may coalesce concurrent
// updates into one transaction and re-run a member alone when another one
// fails), so fn must only touch the Tx and variables it (re)assigns.
type Store interface {
	Update(fn func(Tx) error) error
	// UpdateNow is Update without coalescing, for background jobs that
	// already batch their own work.
	UpdateNow(fn func(Tx) error) error
	View(fn func(Tx) error) error
	Close() error
}

// Tx is one transaction. Values returned by getters are valid only inside
// the transaction.
type Tx interface {
	// Head is the user's last assigned version (0: nothing yet).
	Head(uid uint64) uint64
	// Append assigns the user's next version, asks build for the item
	// encoded at that version, and stores it with its type and time. With a
	// non-empty stateKey, the item replaces the one previously stored under
	// that key (whose log entry is deleted): contacts and profile are state,
	// messages are a log.
	Append(uid uint64, typ uint8, tsMS int64, stateKey []byte, build func(version uint64) []byte) (uint64, error)
	// State returns the item stored under stateKey, or nil.
	State(uid uint64, stateKey []byte) []byte
	// Scan calls fn for the user's items with a version above after, in
	// version order, until fn returns false.
	Scan(uid, after uint64, fn func(version uint64, typ uint8, item []byte) bool)
	// Trim deletes up to max message items with version <= upto written
	// before beforeMS, and returns how many it deleted.
	Trim(uid, upto uint64, beforeMS int64, max int) int

	// Get and Put address small per-user tables (dedup, devices) and the
	// global ones (groups, meta).
	Get(table string, uid uint64, key []byte) []byte
	Put(table string, uid uint64, key, value []byte) error
	Delete(table string, uid uint64, key []byte) error
	// ForEach visits a per-user table until fn returns false.
	ForEach(table string, uid uint64, fn func(k, v []byte) bool)
	// NextID returns the next value of a named global counter (from 1).
	NextID(name string) (uint64, error)

	// Enqueue appends to the durable fan-out queue; Dequeue visits its
	// oldest entries (until fn returns false) and Remove deletes one.
	Enqueue(value []byte) error
	Dequeue(fn func(id uint64, value []byte) bool)
	Remove(id uint64) error
}

// Key names what a transaction is about to read, for Prefetcher: a user's
// head (Table "") or a table entry.
type Key struct {
	Table string
	UID   uint64
	Key   []byte
}

// Prefetcher is optionally implemented by a Tx whose reads are round trips
// (the replicated store): it fetches the keys at once instead of one after
// the other. It only changes speed.
type Prefetcher interface {
	Prefetch(keys ...Key)
}

// Table names for Get/Put.
const (
	TableDedup   = "dedup"   // per user: client_msg_id → SendReply
	TableDevices = "devices" // per user: device → confirmed version, last sync time
	TableGroups  = "groups"  // global (uid 0): group id → Group
	TableMeta    = "meta"    // global (uid 0): secret, counters
)

// boltStore is the bbolt Store. Layout:
//
//	users/<uid u64>/            one bucket per user
//	    "head" → u64            last assigned version
//	    log/<version u64>       → ts_ms u64 | type u8 | SyncItem
//	    state/<key>             → version u64 (the live entry in log)
//	    dedup/, devices/        small per-user tables
//	groups/<gid u64>            → Group
//	meta/<name>                 → counters, the sync key secret
//	fanout/<id u64>             → FanoutJob, oldest first
type boltStore struct{ db *bolt.DB }

var (
	bUsers  = []byte("users")
	bLog    = []byte("log")
	bState  = []byte("state")
	bFanout = []byte("fanout")
	kHead   = []byte("head")
)

// OpenBolt opens (creating) a bbolt store at path. It fails after a second
// if another process holds the file (bbolt takes an exclusive lock).
func OpenBolt(path string) (Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, FreelistType: bolt.FreelistMapType})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("logic: %s is in use by another process", path)
		}
		return nil, fmt.Errorf("logic: open %s: %w", path, err)
	}
	db.MaxBatchDelay = 2 * time.Millisecond
	db.MaxBatchSize = 256
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bUsers, bFanout, []byte(TableGroups), []byte(TableMeta)} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return &boltStore{db: db}, nil
}

func (s *boltStore) Update(fn func(Tx) error) error {
	return s.db.Batch(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

func (s *boltStore) UpdateNow(fn func(Tx) error) error {
	return s.db.Update(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

func (s *boltStore) View(fn func(Tx) error) error {
	return s.db.View(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

func (s *boltStore) Close() error { return s.db.Close() }

type boltTx struct{ tx *bolt.Tx }

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(make([]byte, 0, 8), v) }

// user returns the user's bucket, creating it in a writable transaction.
func (t boltTx) user(uid uint64) *bolt.Bucket {
	users := t.tx.Bucket(bUsers)
	if t.tx.Writable() {
		b, _ := users.CreateBucketIfNotExists(u64(uid))
		return b
	}
	return users.Bucket(u64(uid))
}

func (t boltTx) sub(uid uint64, name []byte) *bolt.Bucket {
	u := t.user(uid)
	if u == nil {
		return nil
	}
	if t.tx.Writable() {
		b, _ := u.CreateBucketIfNotExists(name)
		return b
	}
	return u.Bucket(name)
}

func (t boltTx) table(name string, uid uint64) *bolt.Bucket {
	if uid == 0 {
		return t.tx.Bucket([]byte(name))
	}
	return t.sub(uid, []byte(name))
}

func (t boltTx) Head(uid uint64) uint64 {
	u := t.user(uid)
	if u == nil {
		return 0
	}
	if v := u.Get(kHead); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (t boltTx) Append(uid uint64, typ uint8, tsMS int64, stateKey []byte, build func(uint64) []byte) (uint64, error) {
	u := t.user(uid)
	if u == nil {
		return 0, errors.New("logic: append in a read-only transaction")
	}
	ver := t.Head(uid) + 1
	if err := u.Put(kHead, u64(ver)); err != nil {
		return 0, err
	}
	log, _ := u.CreateBucketIfNotExists(bLog)
	if len(stateKey) > 0 {
		st, _ := u.CreateBucketIfNotExists(bState)
		if old := st.Get(stateKey); len(old) == 8 {
			if err := log.Delete(old); err != nil {
				return 0, err
			}
		}
		if err := st.Put(stateKey, u64(ver)); err != nil {
			return 0, err
		}
	}
	item := build(ver)
	val := make([]byte, 9, 9+len(item))
	binary.BigEndian.PutUint64(val, uint64(tsMS))
	val[8] = typ
	val = append(val, item...)
	return ver, log.Put(u64(ver), val)
}

func (t boltTx) State(uid uint64, stateKey []byte) []byte {
	st := t.sub(uid, bState)
	if st == nil {
		return nil
	}
	v := st.Get(stateKey)
	if len(v) != 8 {
		return nil
	}
	log := t.sub(uid, bLog)
	if log == nil {
		return nil
	}
	if item := log.Get(v); len(item) >= 9 {
		return item[9:]
	}
	return nil
}

func (t boltTx) Scan(uid, after uint64, fn func(uint64, uint8, []byte) bool) {
	log := t.sub(uid, bLog)
	if log == nil {
		return
	}
	c := log.Cursor()
	for k, v := c.Seek(u64(after + 1)); k != nil; k, v = c.Next() {
		if len(k) != 8 || len(v) < 9 {
			continue
		}
		if !fn(binary.BigEndian.Uint64(k), v[8], v[9:]) {
			return
		}
	}
}

func (t boltTx) Trim(uid, upto uint64, beforeMS int64, max int) int {
	log := t.sub(uid, bLog)
	if log == nil {
		return 0
	}
	var del [][]byte
	c := log.Cursor()
	for k, v := c.First(); k != nil && len(del) < max; k, v = c.Next() {
		if len(k) != 8 || binary.BigEndian.Uint64(k) > upto {
			break
		}
		if len(v) >= 9 && v[8] == typeMessages && int64(binary.BigEndian.Uint64(v)) < beforeMS {
			del = append(del, append([]byte(nil), k...))
		}
	}
	n := 0
	for _, k := range del {
		if log.Delete(k) == nil {
			n++
		}
	}
	return n
}

func (t boltTx) Get(table string, uid uint64, key []byte) []byte {
	if b := t.table(table, uid); b != nil {
		return b.Get(key)
	}
	return nil
}

func (t boltTx) Put(table string, uid uint64, key, value []byte) error {
	b := t.table(table, uid)
	if b == nil {
		return errors.New("logic: put in a read-only transaction")
	}
	return b.Put(key, value)
}

func (t boltTx) Delete(table string, uid uint64, key []byte) error {
	if b := t.table(table, uid); b != nil {
		return b.Delete(key)
	}
	return nil
}

func (t boltTx) ForEach(table string, uid uint64, fn func(k, v []byte) bool) {
	b := t.table(table, uid)
	if b == nil {
		return
	}
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if !fn(k, v) {
			return
		}
	}
}

func (t boltTx) NextID(name string) (uint64, error) {
	m := t.tx.Bucket([]byte(TableMeta))
	var n uint64
	if v := m.Get([]byte(name)); len(v) == 8 {
		n = binary.BigEndian.Uint64(v)
	}
	n++
	return n, m.Put([]byte(name), u64(n))
}

func (t boltTx) Enqueue(value []byte) error {
	b := t.tx.Bucket(bFanout)
	id, err := b.NextSequence()
	if err != nil {
		return err
	}
	return b.Put(u64(id), value)
}

func (t boltTx) Dequeue(fn func(uint64, []byte) bool) {
	c := t.tx.Bucket(bFanout).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) == 8 && !fn(binary.BigEndian.Uint64(k), v) {
			return
		}
	}
}

func (t boltTx) Remove(id uint64) error { return t.tx.Bucket(bFanout).Delete(u64(id)) }
