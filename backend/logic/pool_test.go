package logic

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/backend/remote"
	"github.com/longlink/longlink/proto/pb"
)

const poolSecret = "0123456789abcdef0123456789abcdef"

// serveInstance serves l over gRPC on 127.0.0.1:0 and returns its address
// and a function that kills it (no graceful stop: calls in flight fail).
func serveInstance(t testing.TB, l *Logic) (string, func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts, err := remote.ServerOptions(remote.ServerAuth{Secret: poolSecret})
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(opts...)
	remote.NewServer(l, 0).Register(gs)
	go func() { _ = gs.Serve(ln) }()
	var once sync.Once
	kill := func() { once.Do(gs.Stop) }
	t.Cleanup(kill)
	return ln.Addr().String(), kill
}

func newPool(t testing.TB, addrs ...string) *remote.Client {
	t.Helper()
	c, err := remote.NewClient(remote.Config{Addrs: addrs, Auth: remote.ClientAuth{Secret: poolSecret}, EjectBase: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func poolCall(c *remote.Client, uid uint64, method string, q, rep proto.Message) error {
	body, _ := proto.Marshal(q)
	b, err := poolCallRaw(c, uid, method, body)
	if err == nil && rep != nil {
		err = proto.Unmarshal(b, rep)
	}
	return err
}

func poolCallRaw(c *remote.Client, uid uint64, method string, body []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Call(ctx, &backend.Request{UID: uid, Device: "d", Method: method, Body: body})
}

// TestPoolRefusesInstancesOnDifferentStores: two bbolt-backed instances
// behind one pool (each with its own file: the silent loss of issue 15)
// are refused with an error naming both stores, from the first call on;
// two instances on one replicated store are accepted.
func TestPoolRefusesInstancesOnDifferentStores(t *testing.T) {
	dir := t.TempDir()
	a := open(t, filepath.Join(dir, "a.db"), Config{})
	b := open(t, filepath.Join(dir, "b.db"), Config{})
	defer a.Close()
	defer b.Close()
	if a.StoreID() == b.StoreID() || len(a.StoreID()) != 32 {
		t.Fatalf("store ids %q and %q", a.StoreID(), b.StoreID())
	}
	aa, _ := serveInstance(t, a)
	ba, _ := serveInstance(t, b)
	c := newPool(t, aa, ba)
	// Every send fails loudly; none is stored on either side.
	for uid := uint64(1); uid <= 20; uid++ {
		err := poolCall(c, uid, MethodSend, &pb.SendRequest{To: 99, Text: "x"}, nil)
		if err == nil || !strings.Contains(err.Error(), "different stores") || !strings.Contains(err.Error(), a.StoreID()) || !strings.Contains(err.Error(), b.StoreID()) {
			t.Fatalf("uid %d: a send through a pool of two bbolt instances: %v", uid, err)
		}
	}
	for _, l := range []*Logic{a, b} {
		if items, _, _ := syncAll(t, l, 99, "", nil, 0); len(items) != 0 {
			t.Fatalf("%d messages stored despite the refusal", len(items))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	bad := 0
	for _, r := range c.Probe(ctx) {
		if r.Err != nil && strings.Contains(r.Err.Error(), "different stores") {
			bad++
		}
	}
	if bad == 0 {
		t.Fatal("Probe did not report the mix")
	}

	// One replicated store: the same id everywhere, calls served.
	nc := startCluster(t, 1)
	ls := logicCluster(t, nc, 2, "POOL")
	if ls[0].StoreID() != ls[1].StoreID() {
		t.Fatalf("one store, two ids: %s %s", ls[0].StoreID(), ls[1].StoreID())
	}
	x, _ := serveInstance(t, ls[0])
	y, _ := serveInstance(t, ls[1])
	c2 := newPool(t, x, y)
	for uid := uint64(1); uid <= 20; uid++ {
		if err := poolCall(c2, uid, MethodSend, &pb.SendRequest{To: 99, Text: "x"}, nil); err != nil {
			t.Fatalf("uid %d: %v", uid, err)
		}
	}
	for _, r := range c2.Probe(ctx) {
		if r.Err != nil {
			t.Fatalf("%s: %v", r.Addr, r.Err)
		}
	}
}

// TestPoolFailsOverWhenAnInstanceDies: 3 instances on an R3 store behind
// the gateway's pool; senders write with client_msg_id (retrying a failed
// call as a client does) while one instance is killed: every acknowledged
// message is in its recipient's inbox, exactly once.
func TestPoolFailsOverWhenAnInstanceDies(t *testing.T) {
	nc := startCluster(t, 3)
	ls := logicCluster(t, nc, 3, "FAIL")
	var addrs []string
	var kills []func()
	for _, l := range ls {
		a, k := serveInstance(t, l)
		addrs, kills = append(addrs, a), append(kills, k)
	}
	c := newPool(t, addrs...)
	const senders, per = 8, 40
	var (
		wg      sync.WaitGroup
		sent    atomic.Int64
		retries atomic.Int64
		maxGap  atomic.Int64 // longest time a sender could not get a send acknowledged
	)
	a := &acked{msgs: map[uint64]map[uint64]string{}}
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
					err := poolCall(c, from, MethodSend, &pb.SendRequest{To: 100, Text: text, ClientMsgId: text}, &rep)
					if err == nil {
						a.add(100, rep.MsgId, text)
						break
					}
					var be *backend.Error
					if errors.As(err, &be) && be.Kind == backend.KindLogical || try > 50 {
						t.Errorf("send %s: %v", text, err)
						return
					}
					retries.Add(1)
					time.Sleep(20 * time.Millisecond)
				}
				if d := int64(time.Since(start)); d > maxGap.Load() {
					maxGap.Store(d)
				}
				if sent.Add(1) == senders*per/3 {
					kills[1]() // mid-load
					ls[1].Close()
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("%d sends, %d client retries, longest send %v", sent.Load(), retries.Load(), time.Duration(maxGap.Load()))
	if d := time.Duration(maxGap.Load()); d > 3*time.Second {
		t.Fatalf("a send took %v: failover too slow", d)
	}
	if n := retries.Load(); n > 0 {
		t.Fatalf("%d sends failed to the caller: the pool did not fail over within the call", n)
	}
	items := syncVia(t, []*Logic{ls[0], ls[2]}, 100, 50)
	seen := map[uint64]bool{}
	for _, it := range items {
		m := it.GetMessage()
		if seen[m.MsgId] {
			t.Fatalf("message %q twice", m.Text)
		}
		seen[m.MsgId] = true
	}
	for id, text := range a.msgs[100] {
		if !seen[id] {
			t.Fatalf("acknowledged message %q lost", text)
		}
	}
	if len(items) != senders*per {
		t.Fatalf("%d messages stored, %d sent", len(items), senders*per)
	}
}
