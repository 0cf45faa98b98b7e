package logic

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/proto/pb"
)

// TestExportImportMovesABoltStore: a bbolt store with messages (some
// synced and trimmed), contacts, a profile, a group and a queued group
// message moves to the replicated store: every user's sync returns the
// same items at the same versions, old sync keys stay valid, versions and
// ids continue, the queued message is diffused, and the store id is the
// new store's. A truncated dump is refused and can be imported again.
func TestExportImportMovesABoltStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "logic.db")
	st, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	l, err := New(st, Config{Retention: -1})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 30; i++ {
		mustCall(t, l, 1, "a", MethodSend, &pb.SendRequest{To: 2, Text: "m" + string(rune('a'+i%26)), ClientMsgId: "id" + string(rune('a'+i))}, nil)
	}
	_, key2, _ := syncAll(t, l, 2, "b", nil, 10) // bob holds the 30 messages
	mustCall(t, l, 2, "b", MethodContactAdd, &pb.ContactRequest{Uid: 1, Remark: "al"}, nil)
	mustCall(t, l, 2, "b", MethodContactAdd, &pb.ContactRequest{Uid: 3}, nil)
	mustCall(t, l, 2, "b", MethodContactDel, &pb.ContactRequest{Uid: 3}, nil)
	mustCall(t, l, 1, "a", MethodProfileSet, &pb.ProfileSetRequest{Nickname: "alice"}, nil)
	var g pb.Group
	mustCall(t, l, 1, "a", MethodGroupCreate, &pb.GroupCreateRequest{Members: []uint64{2, 3}}, &g)
	mustCall(t, l, 1, "a", MethodSendGroup, &pb.SendGroupRequest{GroupId: g.GroupId, Text: "hi all"}, nil)
	waitFor(t, "diffusion", func() bool { items, _, _ := syncAll(t, l, 3, "", nil, 0); return len(items) == 1 })
	syncAll(t, l, 2, "b", key2, 0) // confirms the 30: trimmed (gaps in bob's log)
	l.flushConfirms()
	if items, _, _ := syncAll(t, l, 2, "x", nil, 0); len(items) != 3 {
		t.Fatalf("bob has %d items before the move; want the 30 messages trimmed", len(items))
	}
	before := map[uint64][]byte{}
	for _, uid := range []uint64{1, 2, 3} {
		items, _, _ := syncAll(t, l, uid, "x", nil, 0)
		before[uid] = itemsBytes(items)
	}
	boltID := l.StoreID()
	l.Close()
	// A group message accepted just before the move, not yet diffused.
	st, _ = OpenBolt(path)
	job, _ := proto.Marshal(&pb.FanoutJob{GroupId: g.GroupId, Message: &pb.Message{MsgId: 999, From: 1, GroupId: g.GroupId, Text: "queued", TsMs: 1}})
	if err := st.UpdateNow(func(tx Tx) error { return tx.Enqueue(job) }); err != nil {
		t.Fatal(err)
	}
	var dump bytes.Buffer
	n, err := Export(st, &dump)
	st.Close()
	if err != nil || n < 30 {
		t.Fatalf("export: %d records, %v", n, err)
	}

	nc := startCluster(t, 1)
	js := nc.openJS(t, "MIG")
	lines := strings.SplitAfter(dump.String(), "\n")
	if _, err := Import(js, strings.NewReader(strings.Join(lines[:len(lines)/2], ""))); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("a truncated dump: %v", err)
	}
	if got, err := Import(js, bytes.NewReader(dump.Bytes())); err != nil || got != n {
		t.Fatalf("import: %d of %d records, %v", got, n, err)
	}
	if _, err := Import(js, bytes.NewReader(dump.Bytes())); err == nil {
		t.Fatal("a second import into a store with data was accepted")
	}
	m, err := New(js, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.StoreID() == boltID {
		t.Fatal("the replicated store took the bbolt store's id")
	}
	waitFor(t, "queued message diffused", func() bool { items, _, _ := syncAll(t, m, 3, "", nil, 0); return len(items) == 2 })
	for _, uid := range []uint64{1, 2} {
		items, _, _ := syncAll(t, m, uid, "x", nil, 0)
		got := itemsBytes(items)
		// What was there is there, and the queued message was diffused after it.
		if !bytes.HasPrefix(got, before[uid]) || len(got) == len(before[uid]) {
			t.Fatalf("uid %d: after the move\n%x\nbefore\n%x", uid, got, before[uid])
		}
	}
	// Bob's old key is valid on the new store and resumes where it was:
	// contact 1 (31), the removal of contact 3 that replaced its addition
	// (33), the group message (34) and the queued one (35).
	items, _, _ := syncAll(t, m, 2, "b", key2, 0)
	if len(items) != 4 || items[0].Version != 31 || items[1].Version != 33 || items[3].Version != 35 {
		t.Fatalf("old key after the move: %d items from version %d", len(items), items[0].Version)
	}
	var rep pb.SendReply
	mustCall(t, m, 1, "a", MethodSend, &pb.SendRequest{To: 2, Text: "after"}, &rep)
	if rep.MsgId != 32 || rep.Version != 34 {
		t.Fatalf("after the move: %v (ids and versions continue)", &rep)
	}
	// client_msg_id dedup moved too.
	var dup pb.SendReply
	mustCall(t, m, 1, "a", MethodSend, &pb.SendRequest{To: 2, Text: "ma", ClientMsgId: "ida"}, &dup)
	if dup.Version != 1 {
		t.Fatalf("a retried send after the move stored again: %v", &dup)
	}
}

func itemsBytes(items []*pb.SyncItem) []byte {
	var b []byte
	for _, it := range items {
		x, _ := proto.MarshalOptions{Deterministic: true}.Marshal(it)
		b = append(b, x...)
	}
	return b
}
