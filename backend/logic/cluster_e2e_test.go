package logic_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/backend/logic"
	"github.com/longlink/longlink/backend/remote"
	"github.com/longlink/longlink/client"
	"github.com/longlink/longlink/internal/testutil"
	"github.com/longlink/longlink/proto/pb"
)

// clusterStream is the store's stream in TestClusterE2E.
const clusterStream = "E2E"

// sendRec is one acknowledged send as the app saw it: when it was first
// tried, when it was acknowledged, and how many attempts it took.
type sendRec struct {
	start, ack time.Time
	attempts   int
}

// clusterLoad is the senders' shared record of what was acknowledged.
type clusterLoad struct {
	t        *testing.T
	patience time.Duration

	mu      sync.Mutex
	acked   map[uint64]map[string]bool // recipient → texts acknowledged
	sends   []sendRec
	perUser map[uint64][]time.Time // sender → start times of its acknowledged sends
	errs    map[string]int         // failed attempts by what the client saw
	failed  atomic.Int64           // failed attempts
	total   atomic.Int64           // acknowledged sends
}

// callWithin is one call with its own deadline.
func callWithin(u *user, d time.Duration, method string, q, rep proto.Message) error {
	body, _ := proto.Marshal(q)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	b, err := u.c.Call(ctx, method, body)
	if err == nil && rep != nil {
		err = proto.Unmarshal(b, rep)
	}
	return err
}

// send is what an app does with a message: try it, and on a transient
// failure (a 2xxx code, a lost or absent connection) retry it with the same
// client_msg_id until it is acknowledged. A logical error is a bug here.
func (l *clusterLoad) send(u *user, method string, q proto.Message, text string, to []uint64) bool {
	rec := sendRec{start: time.Now()}
	for {
		rec.attempts++
		var rep pb.SendReply
		err := callWithin(u, 4*time.Second, method, q, &rep)
		if err == nil {
			break
		}
		var ce *client.CallError
		if errors.As(err, &ce) && !ce.Temporary() {
			l.t.Errorf("uid %d: %s %s: %v", u.uid, method, text, err)
			return false
		}
		l.failed.Add(1)
		l.mu.Lock()
		if c := errClass(err); l.errs[c] == 0 {
			l.t.Logf("first %q: %v", c, err)
			l.errs[c]++
		} else {
			l.errs[c]++
		}
		l.mu.Unlock()
		if time.Since(rec.start) > l.patience {
			l.t.Errorf("uid %d: %s %s not acknowledged after %v (%d attempts): %v", u.uid, method, text, l.patience, rec.attempts, err)
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	rec.ack = time.Now()
	l.mu.Lock()
	for _, r := range to {
		if l.acked[r] == nil {
			l.acked[r] = map[string]bool{}
		}
		l.acked[r][text] = true
	}
	l.sends = append(l.sends, rec)
	l.perUser[u.uid] = append(l.perUser[u.uid], rec.start)
	l.mu.Unlock()
	l.total.Add(1)
	return true
}

// errClass is what the app saw of a failed call, as a short label.
func errClass(err error) string {
	var (
		ce *client.CallError
		sc *client.ServerClose
	)
	switch {
	case errors.As(err, &ce):
		return fmt.Sprintf("%d %s", ce.Code, ce.Code)
	case errors.As(err, &sc):
		return fmt.Sprintf("closed by the server: %d %s", sc.Code, sc.Code)
	case errors.Is(err, client.ErrDeadLink):
		return "dead link"
	case strings.Contains(err.Error(), "reset by peer"), errors.Is(err, io.EOF):
		return "connection reset"
	case errors.Is(err, client.ErrConnLost):
		return "connection lost"
	case errors.Is(err, client.ErrNotReady):
		return "not connected"
	case errors.Is(err, context.DeadlineExceeded):
		return "client deadline"
	}
	return err.Error()
}

// takeErrs returns the failures counted since the last call.
func (l *clusterLoad) takeErrs() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.errs
	l.errs = map[string]int{}
	return e
}

// sendEvery paces each sender (a group send follows a 1:1 send at once).
const sendEvery = 10 * time.Millisecond

// run sends until stop: 1:1 messages to the receivers in turn, and every
// fourth a group message.
func (l *clusterLoad) run(u *user, receivers []uint64, gid uint64, members []uint64, stop <-chan struct{}) {
	// An app's pace: at most one send per sendEvery (the gateway closes a
	// connection sending over --max-frame-rate, 200 frames/s, as a flood).
	next := time.Now()
	for i := 0; ; i++ {
		time.Sleep(time.Until(next))
		next = time.Now().Add(sendEvery)
		select {
		case <-stop:
			return
		default:
		}
		to := receivers[i%len(receivers)]
		text := fmt.Sprintf("d%d-%06d", u.uid, i)
		if !l.send(u, logic.MethodSend, &pb.SendRequest{To: to, Text: text, ClientMsgId: text}, text, []uint64{u.uid, to}) {
			return
		}
		if i%4 == 0 {
			text := fmt.Sprintf("g%d-%06d", u.uid, i)
			if !l.send(u, logic.MethodSendGroup, &pb.SendGroupRequest{GroupId: gid, Text: text, ClientMsgId: text}, text, members) {
				return
			}
		}
	}
}

// waitRecovered waits until every sender has n acknowledged sends that it
// started after since (a sender retries one send until it gets through, so
// that is when the fault stopped hurting it).
func (l *clusterLoad) waitRecovered(senders []uint64, since time.Time, n int, timeout time.Duration) time.Time {
	l.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok := true
		l.mu.Lock()
		for _, s := range senders {
			c := 0
			for _, st := range l.perUser[s] {
				if st.After(since) {
					c++
				}
			}
			ok = ok && c >= n
		}
		l.mu.Unlock()
		if ok {
			return time.Now()
		}
		if l.t.Failed() || time.Now().After(deadline) {
			l.t.Fatalf("the senders did not recover within %v of %v", timeout, since)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// gaps is the failover gap of each send the fault at kill touched (in
// flight at the kill, or started before recovered): from the later of its
// start and the kill to its acknowledgement.
func (l *clusterLoad) gaps(kill, recovered time.Time) (d []time.Duration, retried int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.sends {
		if s.ack.After(kill) && s.start.Before(recovered) {
			d = append(d, s.ack.Sub(maxTime(s.start, kill)))
			if s.attempts > 1 {
				retried++
			}
		}
	}
	slices.Sort(d)
	return d, retried
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(len(d)-1, len(d)*p/100)].Round(time.Millisecond)
}

// syncFromScratch syncs every page from an empty key.
func syncFromScratch(u *user) ([]*pb.SyncItem, error) {
	var (
		items []*pb.SyncItem
		key   []byte
	)
	for {
		var rep pb.SyncReply
		if err := callWithin(u, 4*time.Second, logic.MethodSync, &pb.SyncRequest{Key: key}, &rep); err != nil {
			return nil, err
		}
		items = append(items, rep.Items...)
		key = rep.Key
		if !rep.More {
			return items, nil
		}
	}
}

// workerPID is the pid of the supervisor's worker with index idx.
func workerPID(t *testing.T, supervisor int, idx string) int {
	t.Helper()
	for _, pid := range workerPIDs(t, supervisor) {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		parts := strings.SplitAfter(string(cmdline), "--worker-index\x00")
		if len(parts) == 2 && strings.Split(parts[1], "\x00")[0] == idx {
			return pid
		}
	}
	return 0
}

// TestClusterE2E is the logic cluster end to end, all separate processes:
// 3 NATS nodes (JetStream, the store's stream R3), 3 `longlink logic
// --store nats://…` instances (the binary), one `longlink gateway
// --workers 2 --backend grpc://…` and real SDK clients over TCP. Senders
// chosen so that every instance serves two of them send 1:1 messages to
// the same two receivers and group messages to everyone, concurrently, as
// apps do (a failed send is retried with its client_msg_id). Mid-load, one
// after the other: kill -9 of the stream leader's node, of the logic
// instance serving the most senders, and of the gateway worker holding the
// most senders' connections. Each fault's failover gap is measured and
// bounded; the killed store node, restarted, catches up by itself; and
// every recipient's sync (on a new device) returns every acknowledged
// message exactly once, each sender's in the order sent, with strictly
// increasing, gap-free versions.
//
// The short form (make test) runs each fault with a short load around it;
// LONGLINK_CLUSTER_E2E=long (make test-cluster-long) loads for longer with
// more senders.
func TestClusterE2E(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs processes")
	}
	long := os.Getenv("LONGLINK_CLUSTER_E2E") == "long"
	perInstance, steady, recoverN := 2, 1500*time.Millisecond, 3
	if long {
		perInstance, steady, recoverN = 4, 8*time.Second, 20
	}
	t0 := time.Now()
	testutil.Longlink(t)
	dir := t.TempDir()
	keys, _, err := auth.LoadOrCreate(auth.KeyFile(dir))
	if err != nil {
		t.Fatal(err)
	}
	secretPath := filepath.Join(dir, "logic.secret")
	secret, _, err := remote.LoadOrCreateSecret(secretPath)
	if err != nil {
		t.Fatal(err)
	}

	pc := logic.StartProcCluster(t, 3)
	store := pc.URL() + "?replicas=3&stream=" + clusterStream
	logLevel := "error"
	if os.Getenv("LONGLINK_E2E_VERBOSE") != "" {
		logLevel = "warn"
	}
	gwAddr, natsAddr := testutil.FreeAddr(t), testutil.FreeAddr(t)
	logicAddrs := []string{testutil.FreeAddr(t), testutil.FreeAddr(t), testutil.FreeAddr(t)}
	gw := start(t, "gateway", "--workers", "2", "--listen", gwAddr, "--admin", "", "--http", "", "--data", dir,
		"--nats-listen", natsAddr, "--push-grpc", "", "--backend", "grpc://"+strings.Join(logicAddrs, ","),
		"--backend-secret", secretPath, "--log-level", logLevel, "--loops", "1")
	until(t, "gateway up", 30*time.Second, func() error { return dialable(gwAddr) })
	var lgs []*proc
	for i, a := range logicAddrs {
		lgs = append(lgs, start(t, "logic", "--listen", a, "--data", filepath.Join(dir, fmt.Sprint("logic", i)), "--secret", secretPath,
			"--store", store, "--nats", "nats://"+natsAddr, "--nats-secret", filepath.Join(dir, "nats.secret"), "--metrics", "", "--log-level", logLevel))
	}
	for _, a := range logicAddrs {
		until(t, "logic "+a+" up", 60*time.Second, func() error { return dialable(a) })
	}
	until(t, "two workers", 30*time.Second, func() error {
		if n := len(workerPIDs(t, gw.cmd.Process.Pid)); n != 2 {
			return fmt.Errorf("%d workers", n)
		}
		return nil
	})
	t.Logf("processes up at %v", time.Since(t0).Round(time.Millisecond))

	// The gateway's pool hashes users with this ring (the same addresses):
	// pick senders so that every instance serves perInstance of them.
	ring, err := remote.NewClient(remote.Config{Addrs: logicAddrs, Auth: remote.ClientAuth{Secret: secret}, Logger: testutil.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	owner := map[uint64]string{}
	count := map[string]int{}
	var senders []uint64
	for uid := uint64(1); len(senders) < perInstance*len(logicAddrs); uid++ {
		if o := ring.Owner(uid); count[o] < perInstance {
			count[o]++
			owner[uid] = o
			senders = append(senders, uid)
		}
	}
	ring.Close()
	receivers := []uint64{1_000_001, 1_000_002}
	members := append(slices.Clone(senders), receivers...)
	slices.Sort(members)

	var users []*user
	for _, s := range senders {
		users = append(users, connect(t, gwAddr, keys, s, "phone"))
	}
	var g pb.Group
	until(t, "group create", 20*time.Second, func() error {
		return callWithin(users[0], 4*time.Second, logic.MethodGroupCreate, &pb.GroupCreateRequest{Members: members}, &g)
	})

	load := &clusterLoad{t: t, patience: 45 * time.Second, acked: map[uint64]map[string]bool{}, perUser: map[uint64][]time.Time{}, errs: map[string]int{}}
	// Why clients lost their connections, by reason (a worker's kill is
	// the only expected one).
	var (
		discMu sync.Mutex
		discs  = map[string]int{}
	)
	hook := func(uid uint64, err error) {
		discMu.Lock()
		discs[errClass(err)]++
		discMu.Unlock()
	}
	onDisconnect.Store(&hook)
	defer onDisconnect.Store(nil)
	takeDiscs := func() map[string]int {
		discMu.Lock()
		defer discMu.Unlock()
		d := discs
		discs = map[string]int{}
		return d
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, u := range users {
		wg.Add(1)
		go func() { defer wg.Done(); load.run(u, receivers, g.GroupId, members, stop) }()
	}
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLoad()
	time.Sleep(steady)
	if d := takeDiscs(); len(d) > 0 {
		t.Errorf("steady load: clients lost their gateway connections: %v", d)
	}
	// Nothing has failed yet: no call may fail (the gateway came up before
	// the instances; its pool must not keep failing calls to them after).
	if errs := load.takeErrs(); len(errs) > 0 {
		t.Errorf("steady load, before any fault: failed attempts %v", errs)
	}
	t.Logf("steady load: %d sends acknowledged", load.total.Load())

	type result struct {
		fault     string
		gaps      []time.Duration
		retried   int
		recovered time.Duration
		bound     time.Duration
	}
	var results []result
	fault := func(name string, bound time.Duration, kill func()) {
		t.Helper()
		var disc map[string]int
		at := time.Now()
		kill()
		rec := load.waitRecovered(senders, at, recoverN, 60*time.Second)
		gaps, retried := load.gaps(at, rec)
		results = append(results, result{name, gaps, retried, rec.Sub(at), bound})
		if d := takeDiscs(); len(d) > 0 && !strings.Contains(name, "worker") {
			t.Errorf("%s: clients lost their gateway connections: %v", name, d)
		} else {
			disc = d
		}
		t.Logf("%s: recovered after %v; failover gap of the %d sends it touched p50 %v p99 %v max %v (%d retried; failed attempts %v; disconnections %v)",
			name, rec.Sub(at).Round(time.Millisecond), len(gaps), pct(gaps, 50), pct(gaps, 99), pct(gaps, 100), retried, load.takeErrs(), disc)
		time.Sleep(steady)
	}

	// 1. The node leading the store's stream.
	leader := -1
	until(t, "a stream leader", 20*time.Second, func() error {
		name, _, _, _ := pc.Stream(0, clusterStream)
		for i := range 3 {
			if pc.Name(i) == name {
				leader = i
				return nil
			}
		}
		return fmt.Errorf("no leader (%q)", name)
	})
	fault("kill -9 of the stream leader's NATS node", 20*time.Second, func() { pc.Kill(leader) })
	pc.Start(leader) // it returns, under load, and must catch up by itself

	// 2. The logic instance serving the most senders (all equal: the first).
	victim := logicAddrs[0]
	fault("kill -9 of a logic instance", 5*time.Second, func() { lgs[0].kill() })
	lgs[0].start(t)
	until(t, "logic "+victim+" back", 30*time.Second, func() error { return dialable(victim) })

	// 3. The gateway worker holding the most senders' connections.
	byWorker := map[string]int{}
	for _, u := range users {
		n := u.c.AuthOK().GetNode()
		byWorker[n[strings.LastIndex(n, "/w")+2:]]++
	}
	idx := "0"
	if byWorker["1"] > byWorker["0"] {
		idx = "1"
	}
	pid := workerPID(t, gw.cmd.Process.Pid, idx)
	if pid == 0 {
		t.Fatalf("no worker %s", idx)
	}
	fault(fmt.Sprintf("kill -9 of the gateway worker holding %d of %d senders", byWorker[idx], len(users)), 5*time.Second, func() {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	})
	stopLoad()
	if t.Failed() {
		return
	}
	t.Logf("load stopped at %v: %d sends acknowledged, %d failed attempts", time.Since(t0).Round(time.Millisecond), load.total.Load(), load.failed.Load())

	// The returned store node caught up by itself: every node holds the
	// same stream (last sequence and message count).
	var last uint64
	for i := range 3 {
		if _, l, _, ok := pc.Stream(i, clusterStream); ok && i != leader {
			last = max(last, l)
		}
	}
	pc.WaitStreams(clusterStream, last)
	_, l, n, _ := pc.Stream(leader, clusterStream)
	t.Logf("the restarted node %s holds the stream: last sequence %d, %d messages, as its peers", pc.Name(leader), l, n)

	// Every recipient, on a new device, gets every acknowledged message
	// exactly once, in order.
	for _, uid := range members {
		want := load.acked[uid]
		u := connect(t, gwAddr, keys, uid, "check")
		var items []*pb.SyncItem
		until(t, fmt.Sprintf("uid %d's sync", uid), 30*time.Second, func() error {
			var err error
			if items, err = syncFromScratch(u); err != nil {
				return err
			}
			if len(items) < len(want) {
				return fmt.Errorf("%d of %d messages (group diffusion is asynchronous)", len(items), len(want))
			}
			return nil
		})
		seen := map[string]bool{}
		lastOf := map[string]string{}
		var lastVer uint64
		for _, it := range items {
			m := it.GetMessage()
			if m == nil {
				t.Fatalf("uid %d: a non-message item %v", uid, it)
			}
			if it.Version != lastVer+1 { // only messages in these logs, none trimmed: dense
				t.Fatalf("uid %d: version %d after %d (want strictly increasing, gap-free)", uid, it.Version, lastVer)
			}
			lastVer = it.Version
			if seen[m.Text] {
				t.Fatalf("uid %d: %q twice", uid, m.Text)
			}
			seen[m.Text] = true
			if !want[m.Text] {
				t.Fatalf("uid %d: %q was never acknowledged", uid, m.Text)
			}
			stream := m.Text[:strings.IndexByte(m.Text, '-')]
			if m.Text <= lastOf[stream] {
				t.Fatalf("uid %d: %q after %q", uid, m.Text, lastOf[stream])
			}
			lastOf[stream] = m.Text
		}
		if len(seen) != len(want) {
			t.Fatalf("uid %d: %d of %d acknowledged messages", uid, len(seen), len(want))
		}
		u.c.Close()
	}
	for _, r := range results {
		if max := pct(r.gaps, 100); max > r.bound {
			t.Errorf("%s: a send waited %v (bound %v)", r.fault, max, r.bound)
		}
	}
	t.Logf("%d senders over %d instances, %d recipients: %d acknowledged sends, all delivered exactly once, in order, gap-free; total %v",
		len(senders), len(logicAddrs), len(members), load.total.Load(), time.Since(t0).Round(time.Millisecond))
}
