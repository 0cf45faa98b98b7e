package logic

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	bolt "go.etcd.io/bbolt"
)

// DumpFormat names the dump format Export writes and Import reads.
const DumpFormat = "longlink.logic.dump/1"

// Record is one line of a dump (JSON lines): the store's layout, entry by
// entry, so that versions, sync keys (the secret moves too) and queued
// group messages carry over exactly. The first line is the format, the
// last the number of records before it: a truncated dump is refused.
type Record struct {
	Kind  string `json:"k"` // format, head, log, state, table, queue, end
	UID   uint64 `json:"uid,omitempty"`
	Ver   uint64 `json:"ver,omitempty"` // head and log: the version; queue: the id; end: the count
	Table string `json:"t,omitempty"`   // table: its name; format: DumpFormat
	Key   []byte `json:"key,omitempty"`
	Value []byte `json:"v,omitempty"`
}

// Export writes a bbolt store as a dump; it returns the records written.
// The store id is not exported: the store imported into keeps its own, so
// an instance left on the old file is told apart from the new store.
func Export(st Store, w io.Writer) (int, error) {
	bs, ok := st.(*boltStore)
	if !ok {
		return 0, errors.New("logic: export reads a bbolt store")
	}
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	n := 0
	emit := func(r Record) error {
		n++
		return enc.Encode(r)
	}
	if err := enc.Encode(Record{Kind: "format", Table: DumpFormat}); err != nil {
		return 0, err
	}
	err := bs.db.View(func(tx *bolt.Tx) error {
		users := tx.Bucket(bUsers)
		err := users.ForEach(func(k, _ []byte) error {
			u := users.Bucket(k)
			if u == nil || len(k) != 8 {
				return nil
			}
			uid := binary.BigEndian.Uint64(k)
			if v := u.Get(kHead); len(v) == 8 {
				if err := emit(Record{Kind: "head", UID: uid, Ver: binary.BigEndian.Uint64(v)}); err != nil {
					return err
				}
			}
			return u.ForEachBucket(func(name []byte) error {
				b := u.Bucket(name)
				return b.ForEach(func(k, v []byte) error {
					switch {
					case bytes.Equal(name, bLog):
						if len(k) != 8 {
							return nil
						}
						return emit(Record{Kind: "log", UID: uid, Ver: binary.BigEndian.Uint64(k), Value: v})
					case bytes.Equal(name, bState):
						return emit(Record{Kind: "state", UID: uid, Key: k, Value: v})
					default:
						return emit(Record{Kind: "table", UID: uid, Table: string(name), Key: k, Value: v})
					}
				})
			})
		})
		if err != nil {
			return err
		}
		for _, name := range []string{TableGroups, TableMeta} {
			err := tx.Bucket([]byte(name)).ForEach(func(k, v []byte) error {
				if name == TableMeta && string(k) == "store_id" {
					return nil
				}
				return emit(Record{Kind: "table", Table: name, Key: k, Value: v})
			})
			if err != nil {
				return err
			}
		}
		return tx.Bucket(bFanout).ForEach(func(k, v []byte) error {
			if len(k) != 8 {
				return nil
			}
			return emit(Record{Kind: "queue", Ver: binary.BigEndian.Uint64(k), Value: v})
		})
	})
	if err != nil {
		return n, fmt.Errorf("logic: export: %w", err)
	}
	if err := enc.Encode(Record{Kind: "end", Ver: uint64(n)}); err != nil {
		return n, err
	}
	return n, bw.Flush()
}

// Import loads a dump into an empty JetStream store (stop the logic
// instances on it first; start them after). It returns the records read.
func Import(st Store, r io.Reader) (int, error) {
	js, ok := st.(*jsStore)
	if !ok {
		return 0, errors.New("logic: import writes a replicated (nats://) store")
	}
	check := js.newTx(false)
	if check.Get(TableMeta, 0, []byte("msg")) != nil || check.Get(TableMeta, 0, []byte("group")) != nil || check.err != nil {
		if check.err != nil {
			return 0, check.err
		}
		return 0, errors.New("logic: import: the store already holds messages or groups; import into a new store (another ?stream=)")
	}
	dec := json.NewDecoder(bufio.NewReaderSize(r, 1<<20))
	var head Record
	if err := dec.Decode(&head); err != nil || head.Kind != "format" || head.Table != DumpFormat {
		return 0, fmt.Errorf("logic: import: not a %s dump (%v)", DumpFormat, err)
	}
	t := js.newTx(true)
	flush := func() error {
		err := t.commit()
		t = js.newTx(true)
		return err
	}
	var (
		n            int
		qFirst, qEnd uint64
		ended        bool
		last         []jsWrite
		lastSubj     []string
	)
	for {
		var rec Record
		if err := dec.Decode(&rec); err == io.EOF {
			break
		} else if err != nil {
			return n, fmt.Errorf("logic: import: record %d: %w", n+1, err)
		}
		if ended {
			return n, errors.New("logic: import: data after the end record")
		}
		var subj string
		switch rec.Kind {
		case "head":
			subj, rec.Value = js.headSubj(rec.UID), u64(rec.Ver)
		case "log":
			subj = js.logSubj(rec.UID, rec.Ver)
		case "state":
			subj = js.stateSubj(rec.UID, rec.Key)
		case "table":
			if rec.Table == "" || !validToken(rec.Table) {
				return n, fmt.Errorf("logic: import: record %d: bad table %q", n+1, rec.Table)
			}
			subj = js.tableSubj(rec.Table, rec.UID, rec.Key)
		case "queue":
			// The JetStream queue is read by id from its tail: ids must run on.
			if qEnd != 0 && rec.Ver != qEnd+1 {
				return n, fmt.Errorf("logic: import: fan-out queue id %d after %d (a gap)", rec.Ver, qEnd)
			}
			if qFirst == 0 {
				qFirst = rec.Ver
			}
			qEnd = rec.Ver
			subj = js.prefix + ".q." + strconv.FormatUint(rec.Ver, 10)
		case "end":
			if rec.Ver != uint64(n) {
				return n, fmt.Errorf("logic: import: the dump says %d records, %d read (a truncated dump)", rec.Ver, n)
			}
			ended = true
			continue
		default:
			return n, fmt.Errorf("logic: import: record %d: unknown kind %q", n+1, rec.Kind)
		}
		n++
		if rec.Kind == "table" && rec.UID == 0 && rec.Table == TableMeta && (string(rec.Key) == "msg" || string(rec.Key) == "group") {
			// The counters go last: a store without them counts as empty, so
			// an import that failed half-way can simply be run again.
			last = append(last, jsWrite{data: rec.Value, del: false})
			lastSubj = append(lastSubj, subj)
			continue
		}
		_ = t.put(subj, rec.Value, false)
		if len(t.order) >= 400 {
			if err := flush(); err != nil {
				return n, fmt.Errorf("logic: import: %w", err)
			}
		}
	}
	if !ended {
		return n, fmt.Errorf("logic: import: no end record after %d records (a truncated dump); the store is left without counters, so import a whole dump into it again", n)
	}
	for i, subj := range lastSubj {
		_ = t.put(subj, last[i].data, false)
	}
	if qEnd != 0 {
		_ = t.put(js.tableSubj(TableMeta, 0, []byte(fanoutCounter)), u64(qEnd), false)
		_ = t.put(js.tableSubj(TableMeta, 0, []byte(fanoutDone)), u64(qFirst-1), false)
	}
	if err := flush(); err != nil {
		return n, fmt.Errorf("logic: import: %w", err)
	}
	return n, nil
}

// validToken: a table name must be one subject token.
func validToken(s string) bool {
	for _, c := range []byte(s) {
		if c <= ' ' || c == '.' || c == '*' || c == '>' || c >= 0x7f {
			return false
		}
	}
	return true
}
