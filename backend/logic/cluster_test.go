package logic

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/proto/pb"
)

// logicCluster is n Logic instances, each with its own connection, on one
// replicated store.
func logicCluster(t *testing.T, nc *natsCluster, n int, stream string) []*Logic {
	t.Helper()
	var ls []*Logic
	for range n {
		l, err := New(nc.openJS(t, stream), Config{TrimInterval: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		ls = append(ls, l)
	}
	return ls
}

// syncVia syncs uid from nothing, each page through the next instance (the
// key is valid on all of them), and checks what a client can observe:
// strictly increasing, gap-free versions.
func syncVia(t *testing.T, ls []*Logic, uid uint64, limit uint32) []*pb.SyncItem {
	t.Helper()
	var (
		items []*pb.SyncItem
		key   []byte
	)
	for page := 0; ; page++ {
		var rep pb.SyncReply
		mustCall(t, ls[page%len(ls)], uid, "d", MethodSync, &pb.SyncRequest{Key: key, Limit: limit}, &rep)
		items = append(items, rep.Items...)
		key = rep.Key
		if !rep.More {
			break
		}
		if page > 10000 {
			t.Fatal("sync does not end")
		}
	}
	for i, it := range items {
		if it.Version != uint64(i+1) {
			t.Fatalf("uid %d: item %d has version %d (want %d: versions strictly increasing and gap-free)", uid, i, it.Version, i+1)
		}
	}
	return items
}

type acked struct {
	mu   sync.Mutex
	msgs map[uint64]map[uint64]string // recipient → msg id → text
}

func (a *acked) add(to, id uint64, text string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.msgs[to] == nil {
		a.msgs[to] = map[uint64]string{}
	}
	a.msgs[to][id] = text
}

// TestClusterSendsExactlyOnceInOrder: 3 logic instances on a 3-node
// JetStream (R3) store; senders write 1:1 and group messages to the same
// users concurrently, each call through a different instance, some retried
// with the same client_msg_id on another instance. Then every recipient's
// sync, paged across instances, returns every acknowledged message exactly
// once, each sender's in the order sent, with dense versions.
func TestClusterSendsExactlyOnceInOrder(t *testing.T) {
	nc := startCluster(t, 3)
	ls := logicCluster(t, nc, 3, "CL")
	const (
		senders = 6
		perUser = 20
		groups  = 4
	)
	hot := []uint64{100, 101}
	var g pb.Group
	members := []uint64{100, 101}
	for s := range senders {
		members = append(members, uint64(1+s))
	}
	mustCall(t, ls[0], 100, "d", MethodGroupCreate, &pb.GroupCreateRequest{Members: members}, &g)

	a := &acked{msgs: map[uint64]map[uint64]string{}}
	var wg sync.WaitGroup
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			from := uint64(1 + s)
			for i := range perUser {
				to := hot[i%2]
				text := fmt.Sprintf("%d:%03d", from, i)
				id := fmt.Sprintf("c-%d-%d", from, i)
				var rep pb.SendReply
				if err := call(t, ls[(s+i)%3], from, "d", MethodSend, &pb.SendRequest{To: to, Text: text, ClientMsgId: id}, &rep); err != nil {
					t.Errorf("send %s: %v", text, err)
					return
				}
				a.add(to, rep.MsgId, text)
				a.add(from, rep.MsgId, text)
				if i%5 == 0 { // the same send retried through another instance
					var again pb.SendReply
					if err := call(t, ls[(s+i+1)%3], from, "d", MethodSend, &pb.SendRequest{To: to, Text: text, ClientMsgId: id}, &again); err != nil {
						t.Errorf("resend %s: %v", text, err)
						return
					}
					if again.MsgId != rep.MsgId || again.Version != rep.Version {
						t.Errorf("resend of %s through another instance: %v, first %v", id, &again, &rep)
					}
				}
				if i < groups {
					text := fmt.Sprintf("g%d:%03d", from, i)
					var rep pb.SendReply
					if err := call(t, ls[(s+i+2)%3], from, "d", MethodSendGroup, &pb.SendGroupRequest{GroupId: g.GroupId, Text: text, ClientMsgId: "g" + id}, &rep); err != nil {
						t.Errorf("group send %s: %v", text, err)
						return
					}
					for _, m := range members {
						a.add(m, rep.MsgId, text)
					}
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	users := append([]uint64{}, members...)
	deadline := time.Now().Add(30 * time.Second)
	for _, uid := range users {
		want := a.msgs[uid]
		var items []*pb.SyncItem
		for {
			items = syncVia(t, ls, uid, 7)
			if len(items) >= len(want) || time.Now().After(deadline) {
				break // group diffusion is asynchronous: wait for it
			}
			time.Sleep(50 * time.Millisecond)
		}
		seen := map[uint64]bool{}
		last := map[string]string{}
		for _, it := range items {
			m := it.GetMessage()
			if m == nil {
				t.Fatalf("uid %d: a non-message item %v", uid, it)
			}
			if seen[m.MsgId] {
				t.Fatalf("uid %d: message %d (%q) twice", uid, m.MsgId, m.Text)
			}
			seen[m.MsgId] = true
			if want[m.MsgId] != m.Text {
				t.Fatalf("uid %d: message %d %q was never acknowledged (want %q)", uid, m.MsgId, m.Text, want[m.MsgId])
			}
			// Each sender's messages (1:1 and group apart) arrive in the order sent.
			stream := fmt.Sprint(m.From, m.GroupId != 0)
			if m.Text <= last[stream] {
				t.Fatalf("uid %d: %q after %q", uid, m.Text, last[stream])
			}
			last[stream] = m.Text
		}
		if len(seen) != len(want) {
			t.Fatalf("uid %d: %d of %d acknowledged messages arrived", uid, len(seen), len(want))
		}
	}
}

// TestClusterSurvivesKill9OfAStoreNode: the stream leader of a 3-node R3
// store (each node its own process) is killed with SIGKILL while 2
// instances take sends (clients retry failed calls with the same
// client_msg_id, as apps do): every acknowledged message is stored exactly
// once, calls succeed again within a bound, and the node, restarted,
// catches up with the others by itself.
func TestClusterSurvivesKill9OfAStoreNode(t *testing.T) {
	if testing.Short() {
		t.Skip("runs NATS node processes")
	}
	pc := startProcCluster(t, 3)
	var ls []*Logic
	for range 2 {
		conn, err := nats.Connect(pc.url(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.Timeout(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		st, err := OpenJetStream(JSConfig{Conn: conn, OwnConn: true, Stream: "KILL", Prefix: "kill", Replicas: 3})
		if err != nil {
			t.Fatal(err)
		}
		l, err := New(st, Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		ls = append(ls, l)
	}
	leaderName, _, _ := pc.stream(0, "KILL")
	leader := -1
	for i, s := range pc.specs {
		if s.Name == leaderName {
			leader = i
		}
	}
	if leader < 0 {
		t.Fatalf("no stream leader (%q)", leaderName)
	}
	const senders, per = 6, 40
	a := &acked{msgs: map[uint64]map[uint64]string{}}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		done   int
		worst  time.Duration
		failed int
	)
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			from := uint64(1 + s)
			for i := range per {
				text := fmt.Sprintf("%d:%03d", from, i)
				start := time.Now()
				for try := 0; ; try++ {
					var rep pb.SendReply
					err := call(t, ls[(s+i+try)%2], from, "d", MethodSend, &pb.SendRequest{To: 100, Text: text, ClientMsgId: text}, &rep)
					if err == nil {
						a.add(100, rep.MsgId, text)
						break
					}
					mu.Lock()
					failed++
					mu.Unlock()
					if time.Since(start) > 30*time.Second {
						t.Errorf("send %s: still failing after 30s: %v", text, err)
						return
					}
					time.Sleep(50 * time.Millisecond)
				}
				mu.Lock()
				worst = max(worst, time.Since(start))
				done++
				if done == senders*per/3 {
					pc.kill(leader)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("kill -9 of node n%d (the stream leader) mid-load: %d failed attempts, longest send %v", leader, failed, worst)
	if worst > 15*time.Second {
		t.Fatalf("a send took %v to succeed after the node died", worst)
	}
	items := syncVia(t, ls, 100, 100)
	seen := map[uint64]bool{}
	for _, it := range items {
		m := it.GetMessage()
		if seen[m.MsgId] {
			t.Fatalf("%q twice", m.Text)
		}
		seen[m.MsgId] = true
		if a.msgs[100][m.MsgId] != m.Text {
			t.Fatalf("%q was never acknowledged", m.Text)
		}
	}
	if len(seen) != senders*per {
		t.Fatalf("%d of %d acknowledged messages stored", len(seen), senders*per)
	}
	// The node returns and catches up with the others by itself.
	_, last, _ := pc.stream((leader+1)%3, "KILL")
	pc.start(leader)
	pc.waitStreams("KILL", last)
}

// TestClusterLargeGroupDiffusedInPartsOnce: a 500-member group is more
// than one JetStream transaction can diffuse (400 appends), so its
// messages are diffused in parts, with 2 instances' workers racing for
// the queue: every member gets every message once, in order.
func TestClusterLargeGroupDiffusedInPartsOnce(t *testing.T) {
	nc := startCluster(t, 1)
	ls := logicCluster(t, nc, 2, "BIG")
	members := make([]uint64, 499)
	for i := range members {
		members[i] = uint64(1000 + i)
	}
	var g pb.Group
	mustCall(t, ls[0], 1, "d", MethodGroupCreate, &pb.GroupCreateRequest{Members: members}, &g)
	if len(g.Members) != 500 {
		t.Fatalf("%d members", len(g.Members))
	}
	for i := range 3 {
		mustCall(t, ls[i%2], 1, "d", MethodSendGroup, &pb.SendGroupRequest{GroupId: g.GroupId, Text: fmt.Sprint("big ", i)}, nil)
	}
	for _, uid := range []uint64{1, 1000, 1200, 1398, 1399, 1400, 1498} {
		var items []*pb.SyncItem
		waitFor(t, fmt.Sprint("diffusion to ", uid), func() bool {
			items, _, _ = syncAll(t, ls[1], uid, "x", nil, 0)
			return len(items) >= 3
		})
		time.Sleep(100 * time.Millisecond)
		items, _, _ = syncAll(t, ls[0], uid, "x", nil, 0)
		if len(items) != 3 {
			t.Fatalf("uid %d has %d messages", uid, len(items))
		}
		for i, it := range items {
			if it.GetMessage().GetText() != fmt.Sprint("big ", i) {
				t.Fatalf("uid %d: item %d is %q", uid, i, it.GetMessage().GetText())
			}
		}
	}
}

// TestStoreFailureIsNeverALogicalAnswer: while the replicated store cannot
// be read (here its only node is gone), a read that failed must not look
// like an absent key: calls fail as unavailable (2003, with a retry hint:
// transient, and not the instance's fault, so the pool keeps it), never
// "no such group", "not a contact" or "sync key ahead of the server",
// which a client would not retry (or would act on: drop its key). Found by
// TestClusterE2E's kill of the stream leader.
func TestStoreFailureIsNeverALogicalAnswer(t *testing.T) {
	nc := startCluster(t, 1)
	st, err := OpenJetStream(JSConfig{Conn: nc.connect(t), Stream: "GONE", Prefix: "gone", Replicas: 1, Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	l, err := New(st, Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var g pb.Group
	mustCall(t, l, 1, "d", MethodGroupCreate, &pb.GroupCreateRequest{Members: []uint64{2}}, &g)
	mustCall(t, l, 1, "d", MethodContactAdd, &pb.ContactRequest{Uid: 2}, nil)
	mustCall(t, l, 1, "d", MethodSend, &pb.SendRequest{To: 2, Text: "x"}, nil)
	_, key, _ := syncAll(t, l, 1, "d", nil, 0)
	nc.nodes[0].Shutdown()
	for _, c := range []struct {
		method string
		q      proto.Message
	}{
		{MethodSendGroup, &pb.SendGroupRequest{GroupId: g.GroupId, Text: "y", ClientMsgId: "y"}},
		{MethodGroupAdd, &pb.GroupAddRequest{GroupId: g.GroupId, Members: []uint64{3}}},
		{MethodContactDel, &pb.ContactRequest{Uid: 2}},
		{MethodSync, &pb.SyncRequest{Key: key}},
		{MethodSend, &pb.SendRequest{To: 2, Text: "z", ClientMsgId: "z"}},
	} {
		err := call(t, l, 1, "d", c.method, c.q, nil)
		if kind, be := backend.Classify(err); kind != backend.KindUnavailable || be.Code != codec.CodeUnavailable || be.RetryAfter == 0 {
			t.Errorf("%s with the store down: %v (want unavailable, 2003, with a retry hint)", c.method, err)
		}
	}
}

// TestInstancesStartOnANewStream: instances started together on a store
// whose R3 stream they create all start (the stream's leader is elected
// a moment after its creation; the first read waits for it instead of
// failing the instance's start-up).
func TestInstancesStartOnANewStream(t *testing.T) {
	nc := startCluster(t, 3)
	for round := range 3 {
		name := fmt.Sprint("FRESH", round)
		var wg sync.WaitGroup
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				st, err := OpenJetStream(JSConfig{Conn: nc.connect(t), Stream: name, Prefix: strings.ToLower(name), Replicas: 3})
				if err != nil {
					t.Error(err)
					return
				}
				l, err := New(st, Config{})
				if err != nil {
					t.Errorf("an instance on the new stream %s did not start: %v", name, err)
					return
				}
				l.Close()
			}()
		}
		wg.Wait()
	}
}

// TestCommitWithoutRespondersIsRetried: a commit that finds no responder
// (the stream's interest not yet on this server, as just after its
// creation; here the stream is deleted and re-created) is re-run while
// the store's timeout lasts, so the write succeeds once the stream is
// back; past the timeout it is a transient 2003, not a logical answer.
func TestCommitWithoutRespondersIsRetried(t *testing.T) {
	nc := startCluster(t, 1)
	conn := nc.connect(t)
	st, err := OpenJetStream(JSConfig{Conn: conn, Stream: "GONE", Prefix: "gone", Replicas: 1, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(conn)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := js.Stream(ctx, "GONE")
	if err != nil {
		t.Fatal(err)
	}
	cfg := info.CachedInfo().Config
	write := func() error {
		return st.Update(func(tx Tx) error { return tx.Put("t", 1, []byte("k"), []byte("v")) })
	}
	if err := js.DeleteStream(ctx, "GONE"); err != nil {
		t.Fatal(err)
	}
	back := make(chan error, 1)
	go func() {
		time.Sleep(500 * time.Millisecond)
		_, err := js.CreateStream(ctx, cfg)
		back <- err
	}()
	if err := write(); err != nil {
		t.Fatalf("a write while the stream came back: %v", err)
	}
	if err := <-back; err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(ctx, "GONE"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = write()
	if k, _ := backend.Classify(err); k != backend.KindUnavailable {
		t.Fatalf("a write with no stream for good: %v (want unavailable)", err)
	}
	if d := time.Since(start); d < 3*time.Second {
		t.Fatalf("gave up after %v, before the store's 3s timeout", d)
	}
}
