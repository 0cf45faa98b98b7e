package logic

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/internal/testutil"
	"github.com/longlink/longlink/proto/pb"
)

type fakeNote struct {
	uid    uint64
	device string
	typ    uint32
	ver    uint64
}

type fakeNotifier struct {
	mu    sync.Mutex
	notes []fakeNote
}

func (f *fakeNotifier) Notify(_ context.Context, uid uint64, device string, typ uint32, ver uint64, _ []byte) error {
	f.mu.Lock()
	f.notes = append(f.notes, fakeNote{uid, device, typ, ver})
	f.mu.Unlock()
	return nil
}

func (f *fakeNotifier) has(n fakeNote) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, x := range f.notes {
		if x == n {
			return true
		}
	}
	return false
}

func (f *fakeNotifier) any(uid uint64, device string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, x := range f.notes {
		if x.uid == uid && x.device == device {
			return true
		}
	}
	return false
}

func open(t testing.TB, path string, cfg Config) *Logic {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "logic.db")
	}
	l, err := New(testStore(t, path), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func call(t testing.TB, l *Logic, uid uint64, device, method string, q proto.Message, rep proto.Message) error {
	t.Helper()
	var body []byte
	if q != nil {
		body, _ = proto.Marshal(q)
	}
	b, err := l.Call(context.Background(), &backend.Request{UID: uid, Device: device, Method: method, Body: body})
	if err == nil && rep != nil {
		if uerr := proto.Unmarshal(b, rep); uerr != nil {
			t.Fatalf("%s reply: %v", method, uerr)
		}
	}
	return err
}

func mustCall(t testing.TB, l *Logic, uid uint64, device, method string, q, rep proto.Message) {
	t.Helper()
	if err := call(t, l, uid, device, method, q, rep); err != nil {
		t.Fatalf("%s: %v", method, err)
	}
}

func wantCode(t *testing.T, err error, code codec.Code) {
	t.Helper()
	var be *backend.Error
	if !errors.As(err, &be) || be.Kind != backend.KindLogical || be.Code != code {
		t.Fatalf("want logical error %d, got %v", code, err)
	}
}

// syncAll syncs from key until no more pages; it returns the items and the last key.
func syncAll(t testing.TB, l *Logic, uid uint64, device string, key []byte, limit uint32) ([]*pb.SyncItem, []byte, int) {
	t.Helper()
	var items []*pb.SyncItem
	pages := 0
	for {
		var rep pb.SyncReply
		mustCall(t, l, uid, device, MethodSync, &pb.SyncRequest{Key: key, Limit: limit}, &rep)
		pages++
		items = append(items, rep.Items...)
		key = rep.Key
		if !rep.More {
			return items, key, pages
		}
		if pages > 10000 {
			t.Fatal("sync does not end")
		}
	}
}

func texts(items []*pb.SyncItem) []string {
	var out []string
	for _, it := range items {
		if m := it.GetMessage(); m != nil {
			out = append(out, m.Text)
		}
	}
	return out
}

func TestSendAndSync(t *testing.T) {
	fn := &fakeNotifier{}
	l := open(t, "", Config{Notifier: fn})
	defer l.Close()
	_ = l.Online(context.Background(), backend.Presence{UID: 1, Device: "phone", Node: "n1", ConnID: 1})
	_ = l.Online(context.Background(), backend.Presence{UID: 1, Device: "pc", Node: "n1", ConnID: 2})

	var rep pb.SendReply
	mustCall(t, l, 1, "phone", MethodSend, &pb.SendRequest{To: 2, Text: "hello"}, &rep)
	if rep.MsgId == 0 || rep.Version != 1 {
		t.Fatalf("reply %v", &rep)
	}
	items, key, _ := syncAll(t, l, 2, "d", nil, 0)
	if got := texts(items); len(got) != 1 || got[0] != "hello" || items[0].GetMessage().From != 1 || items[0].Version != 1 {
		t.Fatalf("receiver got %v", items)
	}
	// The sender's own copy (for its other devices).
	mine, _, _ := syncAll(t, l, 1, "pc", nil, 0)
	if got := texts(mine); len(got) != 1 || got[0] != "hello" {
		t.Fatalf("sender got %v", mine)
	}
	// Nothing new with the new key.
	again, _, _ := syncAll(t, l, 2, "d", key, 0)
	if len(again) != 0 {
		t.Fatalf("resync returned %d items", len(again))
	}
	// Notifies: the receiver (every device), the sender's other device only.
	waitFor(t, "notifies", func() bool {
		return fn.has(fakeNote{2, "", 1, 1}) && fn.has(fakeNote{1, "pc", 1, 1})
	})
	if fn.any(1, "phone") || fn.any(1, "") {
		t.Fatal("the sending device was notified")
	}
}

// waitFor polls cond for up to 10 s (testutil.WaitFor).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, what, 10*time.Second, cond)
}

func TestPagingInOrder(t *testing.T) {
	l := open(t, "", Config{})
	defer l.Close()
	for i := 0; i < 250; i++ {
		mustCall(t, l, 1, "", MethodSend, &pb.SendRequest{To: 2, Text: fmt.Sprint(i)}, nil)
	}
	items, key, pages := syncAll(t, l, 2, "", nil, 100)
	if pages != 3 || len(items) != 250 {
		t.Fatalf("%d pages, %d items", pages, len(items))
	}
	for i, it := range items {
		if it.GetMessage().Text != fmt.Sprint(i) || it.Version != uint64(i+1) {
			t.Fatalf("item %d: %v", i, it)
		}
	}
	k, err := DecodeSyncKey(key, l.secret)
	if err != nil || k.Ver[typeMessages] != 250 || k.Ver[typeContacts] != 250 {
		t.Fatalf("key %+v %v", k, err)
	}
}

func TestDurableAcrossRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "logic.db")
	l := open(t, path, Config{})
	for i := 0; i < 10; i++ {
		mustCall(t, l, 1, "", MethodSend, &pb.SendRequest{To: 2, Text: fmt.Sprint(i)}, nil)
	}
	_, key, _ := syncAll(t, l, 2, "", nil, 4)
	mustCall(t, l, 1, "", MethodSend, &pb.SendRequest{To: 2, Text: "10"}, nil)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = open(t, path, Config{})
	defer l.Close()
	// The old key is still valid (the secret persisted) and versions continue.
	items, _, _ := syncAll(t, l, 2, "", key, 0)
	if got := texts(items); len(got) != 1 || got[0] != "10" || items[0].Version != 11 {
		t.Fatalf("after restart: %v", items)
	}
	var rep pb.SendReply
	mustCall(t, l, 2, "", MethodSend, &pb.SendRequest{To: 1, Text: "x"}, &rep)
	if rep.Version != 12 {
		t.Fatalf("version after restart %d, want 12 (never reused)", rep.Version)
	}
}

func TestGroupDiffusion(t *testing.T) {
	fn := &fakeNotifier{}
	l := open(t, "", Config{Notifier: fn})
	defer l.Close()
	var g pb.Group
	mustCall(t, l, 1, "a", MethodGroupCreate, &pb.GroupCreateRequest{Members: []uint64{2, 3, 3}}, &g)
	if len(g.Members) != 3 || g.Owner != 1 {
		t.Fatalf("group %v", &g)
	}
	for i := 0; i < 20; i++ {
		var rep pb.SendReply
		mustCall(t, l, 1+uint64(i%3), "a", MethodSendGroup, &pb.SendGroupRequest{GroupId: g.GroupId, Text: fmt.Sprint(i)}, &rep)
		if rep.MsgId == 0 {
			t.Fatal("no msg id")
		}
	}
	for _, uid := range []uint64{1, 2, 3} {
		var items []*pb.SyncItem
		waitFor(t, "diffusion", func() bool {
			items, _, _ = syncAll(t, l, uid, "x", nil, 0)
			return len(items) == 20
		})
		for i, it := range items {
			if m := it.GetMessage(); m.Text != fmt.Sprint(i) || m.GroupId != g.GroupId {
				t.Fatalf("uid %d item %d: %v", uid, i, it)
			}
		}
		waitFor(t, "group notify", func() bool { return fn.has(fakeNote{uid, "", 1, 20}) || uid == 1 })
	}
	// Errors: not a member, no group, over the limit.
	wantCode(t, call(t, l, 9, "", MethodSendGroup, &pb.SendGroupRequest{GroupId: g.GroupId, Text: "x"}, nil), CodeNotMember)
	wantCode(t, call(t, l, 1, "", MethodSendGroup, &pb.SendGroupRequest{GroupId: 999, Text: "x"}, nil), CodeNoGroup)
	big := make([]uint64, 500)
	for i := range big {
		big[i] = uint64(100 + i)
	}
	wantCode(t, call(t, l, 1, "", MethodGroupCreate, &pb.GroupCreateRequest{Members: big}, nil), CodeGroupTooLarge)
	wantCode(t, call(t, l, 1, "", MethodGroupAdd, &pb.GroupAddRequest{GroupId: g.GroupId, Members: big}, nil), CodeGroupTooLarge)
	var g2 pb.Group
	mustCall(t, l, 1, "", MethodGroupCreate, &pb.GroupCreateRequest{Members: big[:499]}, &g2)
	if len(g2.Members) != 500 {
		t.Fatalf("500-member group has %d", len(g2.Members))
	}
	mustCall(t, l, 1, "", MethodSendGroup, &pb.SendGroupRequest{GroupId: g2.GroupId, Text: "all"}, nil)
	waitFor(t, "500-member diffusion", func() bool {
		items, _, _ := syncAll(t, l, 598, "", nil, 0)
		return len(items) == 1
	})
	// The failed group.add changed nothing.
	var g3 pb.Group
	mustCall(t, l, 1, "", MethodGroupAdd, &pb.GroupAddRequest{GroupId: g.GroupId, Members: []uint64{4}}, &g3)
	if len(g3.Members) != 4 {
		t.Fatalf("group after add %v", g3.Members)
	}
}

func TestQueuedDiffusionSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "logic.db")
	l := open(t, path, Config{})
	var g pb.Group
	mustCall(t, l, 1, "", MethodGroupCreate, &pb.GroupCreateRequest{Members: []uint64{2}}, &g)
	l.Close()
	// A job accepted just before a crash: in the queue, not diffused.
	st := testStore(t, path)
	job, _ := proto.Marshal(&pb.FanoutJob{GroupId: g.GroupId, Message: &pb.Message{MsgId: 77, From: 1, GroupId: g.GroupId, Text: "queued", TsMs: 1}})
	if err := st.UpdateNow(func(tx Tx) error { return tx.Enqueue(job) }); err != nil {
		t.Fatal(err)
	}
	st.Close()
	l = open(t, path, Config{})
	defer l.Close()
	waitFor(t, "diffusion after restart", func() bool {
		items, _, _ := syncAll(t, l, 2, "", nil, 0)
		return len(items) == 1 && items[0].GetMessage().Text == "queued"
	})
	items, _, _ := syncAll(t, l, 1, "", nil, 0)
	if len(items) != 1 {
		t.Fatalf("sender has %d copies", len(items))
	}
}

func TestBadInput(t *testing.T) {
	l := open(t, "", Config{MaxText: 100})
	defer l.Close()
	ctx := context.Background()
	_, err := l.Call(ctx, &backend.Request{UID: 1, Method: "no.such"})
	wantCode(t, err, codec.CodeUnknownMethod)
	_, err = l.Call(ctx, &backend.Request{UID: 1, Method: MethodSend, Body: []byte{0xff, 0xff}})
	wantCode(t, err, CodeBadArgument)
	wantCode(t, call(t, l, 1, "", MethodSend, &pb.SendRequest{To: 2, Text: string(make([]byte, 101))}, nil), CodeTooLarge)
	wantCode(t, call(t, l, 1, "", MethodSend, &pb.SendRequest{To: 0, Text: "x"}, nil), CodeBadArgument)
	wantCode(t, call(t, l, 1, "", MethodSend, &pb.SendRequest{To: 2, Text: ""}, nil), CodeBadArgument)
	mustCall(t, l, 1, "", MethodSend, &pb.SendRequest{To: 2, Text: "ok"}, nil)

	_, key, _ := syncAll(t, l, 2, "", nil, 0)
	forged := append([]byte(nil), key...)
	forged[20] ^= 1
	wantCode(t, call(t, l, 2, "", MethodSync, &pb.SyncRequest{Key: forged}, nil), CodeBadSyncKey)
	wantCode(t, call(t, l, 2, "", MethodSync, &pb.SyncRequest{Key: key[:10]}, nil), CodeBadSyncKey)
	wantCode(t, call(t, l, 3, "", MethodSync, &pb.SyncRequest{Key: key}, nil), CodeBadSyncKey) // another user's
	future := SyncKey{UID: 2, Ver: [4]uint64{0, 99, 1, 1}}.Encode(l.secret)
	wantCode(t, call(t, l, 2, "", MethodSync, &pb.SyncRequest{Key: future}, nil), CodeFutureSyncKey)
	wantCode(t, call(t, l, 2, "", MethodSync, &pb.SyncRequest{Types: []pb.SyncType{7}}, nil), CodeBadArgument)
	// Nothing was corrupted: the data and the good key still work.
	items, _, _ := syncAll(t, l, 2, "", nil, 0)
	if got := texts(items); len(got) != 1 || got[0] != "ok" {
		t.Fatalf("after bad input: %v", got)
	}
	again, _, _ := syncAll(t, l, 2, "", key, 0)
	if len(again) != 0 {
		t.Fatal("good key broken")
	}
}

func TestDedup(t *testing.T) {
	l := open(t, "", Config{})
	defer l.Close()
	var a, b pb.SendReply
	mustCall(t, l, 1, "", MethodSend, &pb.SendRequest{To: 2, Text: "once", ClientMsgId: "c1"}, &a)
	mustCall(t, l, 1, "", MethodSend, &pb.SendRequest{To: 2, Text: "once", ClientMsgId: "c1"}, &b)
	if a.MsgId != b.MsgId || a.Version != b.Version {
		t.Fatalf("retry gave %v then %v", &a, &b)
	}
	items, _, _ := syncAll(t, l, 2, "", nil, 0)
	if len(items) != 1 {
		t.Fatalf("%d copies", len(items))
	}
}

func TestContactsProfileAndTypes(t *testing.T) {
	l := open(t, "", Config{})
	defer l.Close()
	mustCall(t, l, 1, "", MethodContactAdd, &pb.ContactRequest{Uid: 2, Remark: "bob"}, nil)
	mustCall(t, l, 1, "", MethodContactAdd, &pb.ContactRequest{Uid: 3}, nil)
	mustCall(t, l, 1, "", MethodContactDel, &pb.ContactRequest{Uid: 3}, nil)
	wantCode(t, call(t, l, 1, "", MethodContactDel, &pb.ContactRequest{Uid: 3}, nil), CodeNotContact)
	wantCode(t, call(t, l, 1, "", MethodContactDel, &pb.ContactRequest{Uid: 4}, nil), CodeNotContact)
	mustCall(t, l, 1, "", MethodProfileSet, &pb.ProfileSetRequest{Nickname: "al"}, nil)
	mustCall(t, l, 1, "", MethodProfileSet, &pb.ProfileSetRequest{Nickname: "alice"}, nil)
	mustCall(t, l, 2, "", MethodSend, &pb.SendRequest{To: 1, Text: "hi"}, nil)
	var p pb.Profile
	mustCall(t, l, 2, "", MethodProfileGet, &pb.ProfileGetRequest{Uid: 1}, &p)
	if p.Nickname != "alice" || p.Uid != 1 {
		t.Fatalf("profile %v", &p)
	}
	// State types keep only the latest entry per key.
	items, key, _ := syncAll(t, l, 1, "", nil, 0)
	var kinds []string
	for _, it := range items {
		switch {
		case it.GetContact() != nil:
			kinds = append(kinds, fmt.Sprintf("c%d:%v", it.GetContact().Uid, it.GetContact().Removed))
		case it.GetProfile() != nil:
			kinds = append(kinds, "p:"+it.GetProfile().Nickname)
		case it.GetMessage() != nil:
			kinds = append(kinds, "m:"+it.GetMessage().Text)
		}
	}
	if fmt.Sprint(kinds) != "[c2:false c3:true p:alice m:hi]" {
		t.Fatalf("items %v", kinds)
	}
	// A profile-only sync moves only the profile version.
	mustCall(t, l, 1, "", MethodProfileSet, &pb.ProfileSetRequest{Nickname: "al2"}, nil)
	mustCall(t, l, 2, "", MethodSend, &pb.SendRequest{To: 1, Text: "hi2"}, nil)
	var rep pb.SyncReply
	mustCall(t, l, 1, "", MethodSync, &pb.SyncRequest{Key: key, Types: []pb.SyncType{pb.SyncType_SYNC_PROFILE}}, &rep)
	if len(rep.Items) != 1 || rep.Items[0].GetProfile().Nickname != "al2" {
		t.Fatalf("profile sync %v", rep.Items)
	}
	items, _, _ = syncAll(t, l, 1, "", rep.Key, 0)
	if got := texts(items); len(items) != 1 || got[0] != "hi2" {
		t.Fatalf("after profile-only sync: %v", items)
	}
}

func TestTrimAfterEveryDeviceConfirmed(t *testing.T) {
	l := open(t, "", Config{Retention: -1, TrimInterval: time.Hour})
	defer l.Close()
	for i := 0; i < 5; i++ {
		mustCall(t, l, 1, "", MethodSend, &pb.SendRequest{To: 2, Text: fmt.Sprint(i)}, nil)
	}
	_, ka, _ := syncAll(t, l, 2, "a", nil, 0)
	_, kb, _ := syncAll(t, l, 2, "b", nil, 3)
	// Present the keys: a confirms 5, b confirms what its first sync got.
	syncAll(t, l, 2, "a", ka, 0)
	syncAll(t, l, 2, "b", kb, 0)
	l.flushConfirms()
	items, _, _ := syncAll(t, l, 2, "new", nil, 0)
	if len(items) != 0 {
		// b's key covered everything (its last page ended at the head).
		t.Fatalf("%d items left after both devices confirmed", len(items))
	}
	// A device that has not confirmed holds trimming back.
	mustCall(t, l, 1, "", MethodSend, &pb.SendRequest{To: 2, Text: "x"}, nil)
	_, ka, _ = syncAll(t, l, 2, "a", ka, 0)
	syncAll(t, l, 2, "a", ka, 0)
	l.flushConfirms()
	items, _, _ = syncAll(t, l, 2, "new", nil, 0)
	if got := texts(items); len(got) != 1 || got[0] != "x" {
		t.Fatalf("b has not confirmed, yet %v left", got)
	}
	// With a long retention nothing is trimmed.
	l2 := open(t, "", Config{TrimInterval: time.Hour})
	defer l2.Close()
	mustCall(t, l2, 1, "", MethodSend, &pb.SendRequest{To: 2, Text: "keep"}, nil)
	_, k, _ := syncAll(t, l2, 2, "a", nil, 0)
	syncAll(t, l2, 2, "a", k, 0)
	l2.flushConfirms()
	if items, _, _ := syncAll(t, l2, 2, "new", nil, 0); len(items) != 1 {
		t.Fatal("trimmed within retention")
	}
}

func TestConcurrentSendsKeepVersionsDense(t *testing.T) {
	l := open(t, "", Config{})
	defer l.Close()
	var wg sync.WaitGroup
	for s := 0; s < 8; s++ {
		wg.Add(1)
		go func(s int) {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				if err := call(t, l, uint64(10+s), "", MethodSend, &pb.SendRequest{To: 1, Text: "m"}, nil); err != nil {
					t.Error(err)
				}
			}
		}(s)
	}
	wg.Wait()
	items, _, _ := syncAll(t, l, 1, "", nil, 0)
	if len(items) != 200 {
		t.Fatalf("%d items", len(items))
	}
	for i, it := range items {
		if it.Version != uint64(i+1) {
			t.Fatalf("item %d has version %d", i, it.Version)
		}
	}
}

func FuzzDecodeSyncKey(f *testing.F) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	f.Add(SyncKey{UID: 7, Ver: [4]uint64{0, 1, 2, 3}}.Encode(secret))
	f.Add([]byte{})
	f.Add(make([]byte, keyLen))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := DecodeSyncKey(b, secret)
		if err != nil {
			return
		}
		// Anything accepted re-encodes to exactly the same bytes.
		if string(k.Encode(secret)) != string(b) {
			t.Fatalf("accepted %x, re-encodes to %x", b, k.Encode(secret))
		}
	})
}
