package fleete2e

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/backend/logic"
	"github.com/longlink/longlink/backend/remote"
	"github.com/longlink/longlink/client"
	"github.com/longlink/longlink/fleet"
	"github.com/longlink/longlink/internal/testbed"
	"github.com/longlink/longlink/internal/testutil"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/push"
)

var bin string // the longlink binary, built once

func TestMain(m *testing.M) {
	flag.Parse()
	if b := os.Getenv("LONGLINK_BIN"); b != "" {
		bin = b
	} else if !testing.Short() {
		dir, err := os.MkdirTemp("", "llfleet")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		bin = filepath.Join(dir, "longlink")
		out, err := exec.Command("go", "build", "-o", bin, "github.com/longlink/longlink/cmd/longlink").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "building longlink: %v\n%s", err, out)
			os.Exit(2)
		}
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// Ports on every host's own address (each host has its own, so they
// repeat across hosts).
const (
	pGateway = 17800
	pHTTP    = 17801
	pAdmin   = 17802
	pPush    = 17803
	pNATS    = 17810
	pRoute   = 17811
	pMonitor = 17812
	pLogic   = 17820
	maxConns = 200 // per worker process: 400 a host, so a few hundred clients change the weights
)

// fleetBed is the fleet on a test bed.
type fleetBed struct {
	t          *testing.T
	b          *testbed.Bed
	shared     string // the files every host gets (what an operator distributes)
	keys       *auth.KeySet
	pins       []string
	pushTok    string
	natsURLs   string
	hc         *http.Client // from the client namespace
	sp         spec
	gws        []*testbed.Proc
	down       map[int]bool // hosts the test took down (not seeds for new clients)
	unverified atomic.Int32 // lists seen that did not verify
	amu        sync.Mutex
	accepts    []accept // every reconnect's AUTH_OK, by address
	nats       []*testbed.Proc
}

func (f *fleetBed) hostDir(i int) string { return filepath.Join(f.b.Dir(), fmt.Sprint("h", i)) }

// spec is a fleet's layout.
type spec struct {
	hosts   int
	natsOn  []int            // hosts with a NATS node (3)
	logicOn []int            // hosts with a logic instance
	region  func(int) string // each host's region tag
	conns   int              // --max-conns per worker (0: maxConns)
	noFleet bool             // --fleet=false (an A/B of the fleet's cost)
}

var defaultSpec = spec{hosts: 3, natsOn: []int{0, 1, 2}, logicOn: []int{0, 1}, region: func(int) string { return "r1" }}

// startFleet builds everything; each step is bounded.
func startFleet(t *testing.T, sp spec) *fleetBed {
	if testing.Short() {
		t.Skip("runs a multi-host fleet")
	}
	b := testbed.New(t, testbed.Options{Hosts: sp.hosts, ClientAddrs: 16})
	var hostIPs []string
	for _, h := range b.Hosts() {
		hostIPs = append(hostIPs, h.IP)
	}
	t.Logf("test bed: %s, hosts %v, clients from %s…", b.Mode(), hostIPs, b.Client().IP)
	f := &fleetBed{t: t, b: b, sp: sp, shared: filepath.Join(b.Dir(), "shared"), down: map[int]bool{}}
	f.hc = &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: b.Client().DialContext, DisableKeepAlives: true}}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// What an operator distributes to every host: token keys, the NATS
	// secret, the logic secret, the push token, the fleet signing keys, the
	// region table and the NATS TLS CA.
	var err error
	f.keys, _, err = auth.LoadOrCreate(filepath.Join(f.shared, "keys.json"))
	must(err)
	_, _, err = push.LoadOrCreateSecret(filepath.Join(f.shared, push.SecretFile))
	must(err)
	_, _, err = remote.LoadOrCreateSecret(filepath.Join(f.shared, remote.SecretFile))
	must(err)
	f.pushTok, _, err = push.LoadOrCreateToken(filepath.Join(f.shared, push.PushTokenFile), true)
	must(err)
	ring, _, err := fleet.LoadOrCreateKeys(filepath.Join(f.shared, "fleet-keys.json"))
	must(err)
	for _, p := range ring.Pins() {
		f.pins = append(f.pins, p.String())
	}
	cip := net.ParseIP(b.Client().IP).To4()
	must(os.WriteFile(filepath.Join(f.shared, "regions.txt"), fmt.Appendf(nil, "%d.%d.%d.0/24 r1 c1\n", cip[0], cip[1], cip[2]), 0o644))
	var ips []net.IP
	for _, h := range b.Hosts() {
		ips = append(ips, net.ParseIP(h.IP))
	}
	must(writeTLS(f.shared, ips))
	var urls []string
	// Every host gets the bootstrap files (the NATS secret and CA, the
	// logic secret, the push token, the region table); the token and fleet
	// signing keys are published once through NATS (`longlink keys
	// publish`) and every gateway fetches them at start: a host that did
	// not would mint with its own dev key, and the clients' tokens and
	// pins would fail.
	for i := range b.Hosts() {
		must(copyDir(f.shared, f.hostDir(i), "keys.json", "fleet-keys.json"))
	}
	for _, i := range sp.natsOn {
		urls = append(urls, "nats://"+b.Host(i).Addr(pNATS))
	}
	f.natsURLs = strings.Join(urls, ",")

	start := time.Now()
	f.nats = make([]*testbed.Proc, sp.hosts)
	for _, i := range sp.natsOn {
		f.startNATS(i)
	}
	f.waitNATS()
	t.Logf("NATS cluster formed in %v", time.Since(start).Round(time.Millisecond))
	pub := f.start(0, "keys-publish", "keys", "publish", "--data", f.shared, "--token", "--fleet", "--replicas", "3",
		"--nats", f.natsURLs, "--nats-secret", filepath.Join(f.shared, push.SecretFile), "--nats-tls-ca", filepath.Join(f.shared, "ca.pem"))
	select {
	case <-pub.Done():
		if err := pub.Err(); err != nil {
			t.Fatalf("longlink keys publish: %v\n%s", err, pub.Log())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("longlink keys publish did not finish")
	}
	for _, i := range sp.logicOn {
		f.start(i, "logic", "logic", "--listen", b.Host(i).Addr(pLogic), "--data", f.hostDir(i),
			"--store", f.natsURLs+"?replicas=3", "--store-tls-ca", filepath.Join(f.hostDir(i), "ca.pem"),
			"--nats", f.natsURLs, "--nats-tls-ca", filepath.Join(f.hostDir(i), "ca.pem"),
			"--nats-secret", filepath.Join(f.hostDir(i), push.SecretFile),
			"--allow-plaintext", "--metrics", "", "--log-level", "warn")
	}
	f.gws = make([]*testbed.Proc, sp.hosts)
	gwStart := time.Now()
	for i := range sp.hosts {
		f.startGateway(i)
	}
	if sp.noFleet {
		for i := range sp.hosts {
			waitFor(t, fmt.Sprintf("h%d's gateway", i), 60*time.Second, func() bool {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				c, err := b.Client().DialContext(ctx, "tcp", b.Host(i).Addr(pGateway))
				if err == nil {
					c.Close()
				}
				return err == nil
			})
		}
		return f
	}
	conv := f.waitLists(min(sp.hosts, 5), 60*time.Second)
	t.Logf("gateways up and every host's list names all hosts %v after the gateways started (fleet-state convergence %v after the first list)", time.Since(gwStart).Round(time.Millisecond), conv.Round(time.Millisecond))
	return f
}

func (f *fleetBed) start(i int, name string, args ...string) *testbed.Proc {
	f.t.Helper()
	p, err := f.b.Host(i).Start(name, append([]string{bin}, args...))
	if err != nil {
		f.t.Fatal(err)
	}
	return p
}

func (f *fleetBed) startNATS(i int) {
	var routes []string
	for _, j := range f.sp.natsOn {
		if j != i {
			routes = append(routes, f.b.Host(j).Addr(pRoute))
		}
	}
	d := f.hostDir(i)
	f.nats[i] = f.start(i, "nats", "nats", "--name", fmt.Sprint("n", i), "--listen", f.b.Host(i).Addr(pNATS),
		"--cluster-listen", f.b.Host(i).Addr(pRoute), "--routes", strings.Join(routes, ","),
		"--monitor", f.b.Host(i).Addr(pMonitor), "--data", d,
		"--tls-cert", filepath.Join(d, "cert.pem"), "--tls-key", filepath.Join(d, "key.pem"),
		"--plaintext-ok", "--log-level", "warn")
}

func (f *fleetBed) startGateway(i int) {
	h, d := f.b.Host(i), f.hostDir(i)
	f.gws[i] = f.start(i, "gateway", "gateway", "--workers", "2", "--data", d,
		"--listen", h.Addr(pGateway), "--http", h.Addr(pHTTP), "--admin", h.Addr(pAdmin), "--push-grpc", h.Addr(pPush),
		"--nats", f.natsURLs, "--nats-secret", filepath.Join(d, push.SecretFile), "--nats-tls-ca", filepath.Join(d, "ca.pem"),
		"--backend", "grpc://"+strings.Join(f.logicAddrs(), ","),
		"--backend-secret", filepath.Join(d, remote.SecretFile), "--backend-allow-plaintext",
		"--host-id", fmt.Sprint("h", i), "--region", f.sp.region(i), "--carrier", "c1", "--advertise", h.Addr(pGateway),
		"--region-table", filepath.Join(d, "regions.txt"), "--fleet-interval", "500ms",
		"--max-conns", fmt.Sprint(cmp.Or(f.sp.conns, maxConns)), fmt.Sprintf("--fleet=%v", !f.sp.noFleet), "--log-level", "warn")
}

func (f *fleetBed) logicAddrs() []string {
	var as []string
	for _, i := range f.sp.logicOn {
		as = append(as, f.b.Host(i).Addr(pLogic))
	}
	return as
}

func (f *fleetBed) waitNATS() {
	f.t.Helper()
	deadline := time.Now().Add(40 * time.Second)
	for {
		var leaders []string
		for _, i := range f.sp.natsOn {
			leaders = append(leaders, f.metaLeader(i))
		}
		if leaders[0] != "" && leaders[0] == leaders[1] && leaders[1] == leaders[2] {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("NATS cluster did not form: meta leaders %q", leaders)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (f *fleetBed) metaLeader(i int) string {
	return testutil.MetaLeader(f.hc, f.b.Host(i).Addr(pMonitor), 3)
}

// nodes is host i's GET /v1/nodes, verified; nil when it does not answer.
func (f *fleetBed) nodes(i int) *pb.NodeList {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	sl, err := client.FetchNodeList(ctx, f.hc, "http://"+f.b.Host(i).Addr(pHTTP)+"/v1/nodes")
	if err != nil {
		return nil
	}
	pins := f.fleetPins()
	l, err := client.VerifyNodeList(sl, pins)
	if err != nil {
		// Until a host has fetched the published fleet keys it signs with
		// its own (waitLists waits for lists that verify).
		if f.unverified.Add(1) == 1 {
			f.t.Logf("host %d's list does not verify yet: %v", i, err)
		}
		return nil
	}
	return l
}

func (f *fleetBed) fleetPins() []client.FleetPin {
	var ps []client.FleetPin
	for _, s := range f.pins {
		p, _ := client.ParseFleetPin(s)
		ps = append(ps, p)
	}
	return ps
}

// waitLists waits until every live host's list names want hosts; it
// returns the time from the first list seen to all of them agreeing.
func (f *fleetBed) waitLists(want int, d time.Duration, skip ...int) time.Duration {
	f.t.Helper()
	deadline := time.Now().Add(d)
	var first time.Time
	for {
		ok := true
		var seen []string
		for i := range f.sp.hosts {
			if slices.Contains(skip, i) {
				continue
			}
			l := f.nodes(i)
			if l != nil && first.IsZero() {
				first = time.Now()
			}
			n := 0
			if l != nil {
				n = len(l.Nodes)
			}
			seen = append(seen, fmt.Sprintf("h%d:%d", i, n))
			ok = ok && n == want
		}
		if ok {
			return time.Since(first)
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("lists did not converge on %d hosts within %v: %v", want, d, seen)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type accept struct {
	at   time.Time
	addr string
}

// fclient is one client in the client namespace.
type fclient struct {
	uid        uint64
	c          *client.Client
	mu         sync.Mutex
	versions   map[uint64]bool // push versions received (type 9)
	reconnects []time.Duration
	lastUp     time.Time
}

func (fc *fclient) got(v uint64) bool {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return fc.versions[v]
}

// host is the index of the host the client is on (-1: none).
func (f *fleetBed) hostOf(fc *fclient) int {
	a := fc.c.Reconnects().Addr
	for i, h := range f.b.Hosts() {
		if a == h.Addr(pGateway) {
			return i
		}
	}
	return -1
}

// dial connects a client: sticky ones only know host 0 and no pins (they
// ignore lists); fleet ones fetch a list from host uid%3 and follow it.
func (f *fleetBed) dial(uid uint64, sticky bool) *fclient {
	f.t.Helper()
	fc := &fclient{uid: uid, versions: map[uint64]bool{}}
	tok, err := f.keys.Mint(uid, "", time.Now().Add(time.Hour))
	if err != nil {
		f.t.Fatal(err)
	}
	src := int(uid)
	o := client.Options{
		Token: tok, Device: "d", HeartbeatInterval: 2 * time.Second, PongTimeout: 2 * time.Second,
		DialTimeout: 3 * time.Second, BackoffMin: 200 * time.Millisecond, BackoffMax: 2 * time.Second,
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return f.b.Client().DialFrom(ctx, src, network, addr)
		},
		OnPush: func(p *pb.Push) {
			fc.mu.Lock()
			fc.versions[p.Version] = true
			fc.mu.Unlock()
		},
		OnReconnect: func(d time.Duration, addr string) {
			f.amu.Lock()
			f.accepts = append(f.accepts, accept{time.Now(), addr})
			f.amu.Unlock()
			fc.mu.Lock()
			fc.reconnects = append(fc.reconnects, d)
			fc.lastUp = time.Now()
			fc.mu.Unlock()
		},
	}
	if sticky {
		o.Seeds = []string{f.b.Host(0).Addr(pGateway)}
	} else {
		n := f.sp.hosts
		for i := range n {
			if h := (int(uid) + i) % n; f.gws[h] != nil && !f.down[h] {
				o.Seeds = append(o.Seeds, f.b.Host(h).Addr(pGateway))
			}
		}
		o.FleetPins = f.pins
		o.NodesURL = "http://" + o.Seeds[0][:strings.LastIndex(o.Seeds[0], ":")] + fmt.Sprintf(":%d/v1/nodes", pHTTP)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		sl, err := client.FetchNodeList(ctx, f.hc, o.NodesURL)
		cancel()
		if err != nil {
			f.t.Fatalf("uid %d: GET /v1/nodes: %v", uid, err)
		}
		o.NodeList = sl
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	fc.c, err = client.Dial(ctx, o)
	if err != nil {
		f.t.Fatalf("uid %d: %v", uid, err)
	}
	f.t.Cleanup(func() { fc.c.Close() })
	return fc
}

func (f *fleetBed) pushClient(i int) pb.PushServiceClient {
	f.t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+f.b.Host(i).Addr(pPush), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(push.BearerToken(f.pushTok)),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return f.b.Client().DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { cc.Close() })
	return pb.NewPushServiceClient(cc)
}

// pushAll notifies every client through host i's PushService (version v)
// and waits until each has it; it returns the per-push delivery times.
func (f *fleetBed) pushAll(i int, cs []*fclient, v uint64, within time.Duration) []time.Duration {
	f.t.Helper()
	api := f.pushClient(i)
	var lat []time.Duration
	var mu sync.Mutex
	var wg sync.WaitGroup
	var failed atomic.Int32
	sem := make(chan struct{}, 16)
	for _, fc := range cs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			start := time.Now()
			deadline := start.Add(within)
			for time.Now().Before(deadline) {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, err := api.Notify(ctx, &pb.NotifyRequest{Uid: fc.uid, Type: 9, Version: v})
				cancel()
				if err == nil {
					for t := time.Now().Add(time.Second); time.Now().Before(t); time.Sleep(5 * time.Millisecond) {
						if fc.got(v) {
							mu.Lock()
							lat = append(lat, time.Since(start))
							mu.Unlock()
							return
						}
					}
				} else {
					time.Sleep(100 * time.Millisecond)
				}
			}
			failed.Add(1)
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		f.t.Fatalf("push v%d via h%d: %d of %d clients did not get it within %v", v, i, n, len(cs), within)
	}
	return lat
}

func pct(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
	return fmt.Sprintf("n=%d p50=%v p99=%v max=%v", len(s), at(0.5).Round(time.Millisecond), at(0.99).Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond))
}

func call(fc *fclient, method string, q, rep proto.Message) error {
	body, _ := proto.Marshal(q)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := fc.c.Call(ctx, method, body)
	if err == nil && rep != nil {
		err = proto.Unmarshal(b, rep)
	}
	return err
}

// sendRing has each client send one message to the next (retrying with
// the same client_msg_id, as apps do) and returns what was acknowledged.
func sendRing(t *testing.T, cs []*fclient, tag string) map[uint64][]string {
	acked := map[uint64][]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, fc := range cs {
		to := cs[(i+1)%len(cs)].uid
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("%s-%d", tag, fc.uid)
			for try := 0; try < 50; try++ {
				if err := call(fc, logic.MethodSend, &pb.SendRequest{To: to, Text: id, ClientMsgId: id}, nil); err == nil {
					mu.Lock()
					acked[to] = append(acked[to], id)
					mu.Unlock()
					return
				}
				time.Sleep(200 * time.Millisecond)
			}
			t.Errorf("send %s never acknowledged", id)
		}()
	}
	wg.Wait()
	return acked
}

// checkSynced: every acknowledged message is in its receiver's sync.
func checkSynced(t *testing.T, cs []*fclient, acked map[uint64][]string) {
	t.Helper()
	by := map[uint64]*fclient{}
	for _, fc := range cs {
		by[fc.uid] = fc
	}
	lost := 0
	for uid, ids := range acked {
		have := map[string]bool{}
		var key []byte
		for page := 0; page < 50; page++ {
			var rep pb.SyncReply
			var err error
			for try := 0; try < 30; try++ {
				if err = call(by[uid], logic.MethodSync, &pb.SyncRequest{Key: key, Limit: 500}, &rep); err == nil {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("sync of %d: %v", uid, err)
			}
			for _, it := range rep.Items {
				if m := it.GetMessage(); m != nil {
					have[m.ClientMsgId] = true
				}
			}
			key = rep.Key
			if !rep.More {
				break
			}
		}
		for _, id := range ids {
			if !have[id] {
				lost++
				t.Errorf("acknowledged message %s to %d is not in its sync", id, uid)
			}
		}
	}
	if lost == 0 {
		t.Logf("every acknowledged message (%d receivers) is in its receiver's sync", len(acked))
	}
}

func spread(f *fleetBed, cs []*fclient) []int {
	n := make([]int, f.sp.hosts)
	for _, fc := range cs {
		if h := f.hostOf(fc); h >= 0 {
			n[h]++
		}
	}
	return n
}

// TestFleet is the fleet end to end on the bed: node lists spread clients
// to the least loaded hosts; a push from any host's PushService reaches
// users on every host; a host's kill -9 (every process: its gateway, its
// NATS node) moves its clients to the others within a bound, pushes to
// them resume and no acknowledged message is lost; the host restarts and
// refills; then its link is cut and its clients move again.
func TestFleet(t *testing.T) {
	f := startFleet(t, defaultSpec)
	testStart := time.Now()
	// Load host 0 with sticky clients (they know only host 0), and let the
	// fleet hear about it.
	const sticky, fleetN = 300, 120
	var all, fleetCs []*fclient
	for u := range sticky {
		all = append(all, f.dial(uint64(10000+u), true))
	}
	// Until every host's list weighs host 0 lowest (its announcement heard
	// and the lists rebuilt; a fixed 1.5 s was too short on a loaded CI
	// host, where convergence alone took 1.6 s).
	h0 := f.b.Host(0).Addr(pGateway)
	waitFor(t, "every host's list to weigh host 0 lowest", 30*time.Second, func() bool {
		for i := range f.sp.hosts {
			l := f.nodes(i)
			if l == nil || len(l.Nodes) != f.sp.hosts {
				return false
			}
			var w0, others uint32 = 0, 1001
			for _, nd := range l.Nodes {
				if nd.Addr == h0 {
					w0 = nd.Weight
				} else {
					others = min(others, nd.Weight)
				}
			}
			if w0 == 0 || w0 >= others {
				return false
			}
		}
		return true
	})
	for u := range fleetN {
		fc := f.dial(uint64(1+u), false)
		all = append(all, fc)
		fleetCs = append(fleetCs, fc)
	}
	n := spread(f, fleetCs)
	t.Logf("fleet clients per host with host 0 holding %d sticky ones (of %d a host): %v", sticky, 2*maxConns, n)
	// Host 0 has a quarter of its room left, the others all of theirs, so
	// it should get the fewest. Which of hosts 1 and 2 wins a client's race
	// also depends on which answers first, so their split is not checked
	// (65/36 was seen).
	if n[0] >= min(n[1], n[2]) || n[0] > fleetN/4 || n[1]+n[2] < fleetN*3/4 {
		t.Fatalf("lists did not send clients to the least loaded hosts: %v", n)
	}

	// A push from each host's PushService reaches every fleet client.
	var lat []time.Duration
	for i := range 3 {
		lat = append(lat, f.pushAll(i, fleetCs, uint64(100+i), 10*time.Second)...)
	}
	t.Logf("push from any host to users on every host: %s", pct(lat))

	// Messages acknowledged before the failure.
	acked := sendRing(t, fleetCs, "before")

	// Host failure: kill -9 everything on the host with the most fleet
	// clients among 1 and 2 (not host 0: it has the sticky clients).
	victim := 1
	if n[2] > n[1] {
		victim = 2
	}
	var moved []*fclient
	for _, fc := range fleetCs {
		if f.hostOf(fc) == victim {
			moved = append(moved, fc)
		}
	}
	killAt := time.Now()
	killed := f.b.Host(victim).KillAll()
	t.Logf("killed %d processes of h%d (%d fleet clients on it)", killed, victim, len(moved))
	const bound = 10 * time.Second
	waitMoved(t, f, moved, victim, killAt, bound)
	acked2 := sendRing(t, fleetCs, "after-kill")
	lat = f.pushAll(3-victim, moved, 200, 10*time.Second) // via the surviving non-sticky host
	t.Logf("push to moved clients after the kill: %s", pct(lat))
	checkSynced(t, fleetCs, acked)
	checkSynced(t, fleetCs, acked2)

	// Restart the host: its NATS node rejoins, its gateway comes back into
	// the lists, and new clients refill it.
	f.startNATS(victim)
	f.startGateway(victim)
	f.waitLists(3, 60*time.Second)
	var refill []*fclient
	for u := range 60 {
		fc := f.dial(uint64(5000+u), false)
		refill = append(refill, fc)
		all = append(all, fc)
	}
	n = spread(f, refill)
	t.Logf("after h%d's restart, new clients per host: %v", victim, n)
	// Lists are weighted-random by spare capacity (8 variants a place), and
	// a just-restarted host also announces its start-up CPU, so its share
	// is a distribution, not a fixed third: it must beat the loaded host 0
	// and get a fair share.
	if n[victim] <= n[0] || n[victim] < len(refill)/4 {
		t.Fatalf("the restarted (least loaded) host got %d of %d new clients (per host %v)", n[victim], len(refill), n)
	}

	// Link cut: its packets are dropped, its sockets stay open.
	if f.b.Mode() != testbed.ModeNetns {
		t.Logf("link cut skipped: %v", testbed.ErrUnsupported)
		return
	}
	moved = moved[:0]
	for _, fc := range append(fleetCs, refill...) {
		if f.hostOf(fc) == victim {
			moved = append(moved, fc)
		}
	}
	cutAt := time.Now()
	if err := f.b.Host(victim).Cut(); err != nil {
		t.Fatal(err)
	}
	t.Logf("cut h%d's link (%d fleet clients on it)", victim, len(moved))
	waitMoved(t, f, moved, victim, cutAt, 15*time.Second) // heartbeat 2 s + pong 2 s to notice
	lat = f.pushAll(3-victim, moved, 300, 15*time.Second)
	t.Logf("push to moved clients after the cut: %s", pct(lat))
	acked3 := sendRing(t, append(fleetCs, refill...), "after-cut")
	checkSynced(t, append(fleetCs, refill...), acked3)
	if err := f.b.Host(victim).Restore(); err != nil {
		t.Fatal(err)
	}
	t.Logf("TestFleet body took %v", time.Since(testStart).Round(time.Second))
}

// waitMoved waits until every client of the dead host is connected to
// another one within bound, and logs the distribution of the time from the
// failure to each client's new AUTH_OK, and of the client-measured time
// from losing its connection to the new AUTH_OK.
func waitMoved(t *testing.T, f *fleetBed, moved []*fclient, dead int, at time.Time, bound time.Duration) {
	t.Helper()
	deadline := at.Add(bound)
	for {
		left := 0
		for _, fc := range moved {
			if h := f.hostOf(fc); h < 0 || h == dead {
				left++
			}
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d clients of h%d not reconnected elsewhere within %v", left, len(moved), dead, bound)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var sinceFailure, clientSide []time.Duration
	for _, fc := range moved {
		fc.mu.Lock()
		sinceFailure = append(sinceFailure, fc.lastUp.Sub(at))
		if len(fc.reconnects) > 0 {
			clientSide = append(clientSide, fc.reconnects[len(fc.reconnects)-1])
		}
		fc.mu.Unlock()
	}
	t.Logf("h%d's clients reconnected elsewhere: failure→AUTH_OK %s; connection loss→AUTH_OK %s (bound %v)", dead, pct(sinceFailure), pct(clientSide), bound)
}

func writeTLS(dir string, ips []net.IP) error {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "longlink bed CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "nats"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IPAddresses: ips,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	for name, b := range map[string][]byte{
		"ca.pem":   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		"cert.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"key.pem":  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

func copyDir(from, to string, except ...string) error {
	if err := os.MkdirAll(to, 0o700); err != nil {
		return err
	}
	es, err := os.ReadDir(from)
	if err != nil {
		return err
	}
	for _, e := range es {
		if slices.Contains(except, e.Name()) {
			continue
		}
		src, err := os.Open(filepath.Join(from, e.Name()))
		if err != nil {
			return err
		}
		dst, err := os.OpenFile(filepath.Join(to, e.Name()), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			src.Close()
			return err
		}
		_, err = io.Copy(dst, src)
		src.Close()
		dst.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// TestFleetRollingUpgrade evacuates, restarts and refills each host in
// turn while clients send messages: the other hosts' accept rate (AUTH_OKs
// of moved clients per second, over 1 s windows) stays within 1.5x the
// evacuation rate (jittered: one reconnect per 1/rate slot, at a random
// point in it; docs/fleet.md). The pacer itself keeps 1.2x
// (TestFleetEvacPacerWindow, simulated clock); here arrivals are timed at
// each client's AUTH_OK, which adds the connect and AUTH latency of a
// loaded host: CI saw 35/s at 25/s when 48 clients took 1.9 s. Unpaced
// GOAWAYs would bring a host's 48–151 clients within well under a second.
// No call fails beyond the documented retries
// (ErrNotReady/ErrConnLost while moving, retryable codes), each retried
// with its client_msg_id.
func TestFleetRollingUpgrade(t *testing.T) {
	f := startFleet(t, defaultSpec)
	const n, rate = 150, 25.0
	var cs []*fclient
	for u := range n {
		cs = append(cs, f.dial(uint64(1+u), false))
	}
	t.Logf("clients per host: %v", spread(f, cs))
	stop := make(chan struct{})
	var calls, retried, failed atomic.Int64
	var wg sync.WaitGroup
	senders := slices.Clone(cs) // the first clients send throughout; refills only join
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cs := senders
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				fc := cs[(g*31+k)%len(cs)]
				id := fmt.Sprintf("ru-%d-%d", g, k)
				start := time.Now()
				for {
					err := call(fc, logic.MethodSend, &pb.SendRequest{To: cs[(g+k)%len(cs)].uid, Text: id, ClientMsgId: id}, nil)
					if err == nil {
						break
					}
					var ce *client.CallError
					retry := errors.Is(err, client.ErrNotReady) || errors.Is(err, client.ErrConnLost) || (errors.As(err, &ce) && ce.Temporary())
					if !retry || time.Since(start) > 15*time.Second {
						failed.Add(1)
						t.Errorf("call %s failed: %v", id, err)
						break
					}
					retried.Add(1)
					time.Sleep(50 * time.Millisecond)
				}
				calls.Add(1)
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	worst := 0.0
	for i := range 3 {
		on := spread(f, cs)[i]
		tok, err := os.ReadFile(filepath.Join(f.hostDir(i), "admin.token"))
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest(http.MethodPost, "http://"+f.b.Host(i).Addr(pAdmin)+"/fleet/evacuate", strings.NewReader(fmt.Sprintf(`{"rate": %g, "jitter": true}`, rate)))
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
		resp, err := f.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("evacuate h%d: %s %s", i, resp.Status, body)
		}
		from := time.Now()
		bound := time.Duration(float64(on)/rate*float64(time.Second))*2 + 10*time.Second
		waitFor(t, fmt.Sprintf("h%d empty", i), bound, func() bool { return spread(f, cs)[i] == 0 })
		took := time.Since(from)
		peak := f.peakRate(from, time.Now().Add(time.Second), f.b.Host(i).Addr(pGateway))
		worst = max(worst, peak)
		t.Logf("h%d: %d clients evacuated at %g/s in %v; the others' peak accept rate %.0f/s (limit %.0f/s)", i, on, rate, took.Round(time.Millisecond), peak, 1.5*rate)
		if peak > 1.5*rate {
			t.Errorf("h%d's evacuation: the other hosts accepted %.0f/s, over 1.5x %g/s", i, peak, rate)
		}
		if err := f.gws[i].Stop(20 * time.Second); err != nil {
			t.Logf("h%d stop: %v", i, err)
		}
		f.startGateway(i)
		f.waitLists(3, 60*time.Second)
		var refill []*fclient
		for u := range 30 {
			fc := f.dial(uint64(1000*(i+1)+u), false)
			refill = append(refill, fc)
		}
		cs = append(cs, refill...)
		t.Logf("h%d restarted; 30 new clients per host: %v", i, spread(f, refill))
	}
	close(stop)
	wg.Wait()
	t.Logf("rolling upgrade of 3 hosts: %d calls, %d retries (documented retry cases), %d failed; worst accept rate %.0f/s for %g/s evacuations", calls.Load(), retried.Load(), failed.Load(), worst, rate)
	if failed.Load() > 0 {
		t.Fatalf("%d calls failed", failed.Load())
	}
}

// peakRate is the most AUTH_OKs at addresses other than except in any 1 s
// window between from and to.
func (f *fleetBed) peakRate(from, to time.Time, except string) float64 {
	f.amu.Lock()
	var ts []time.Time
	for _, a := range f.accepts {
		if a.addr != except && !a.at.Before(from) && a.at.Before(to) {
			ts = append(ts, a.at)
		}
	}
	f.amu.Unlock()
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	peak, j := 0, 0
	for i := range ts {
		for ts[i].Sub(ts[j]) >= time.Second {
			j++
		}
		peak = max(peak, i-j+1)
	}
	return float64(peak)
}

// TestFleetSiteFailover: two IDCs of two hosts each (the NATS cluster has
// one node in IDC A and two in B, the logic instances are in B); IDC A is
// lost as a whole (its links cut; on loopback its processes killed): its
// clients move to IDC B within the bound, pushes reach them there and no
// acknowledged message is lost.
func TestFleetSiteFailover(t *testing.T) {
	f := startFleet(t, spec{hosts: 4, natsOn: []int{1, 2, 3}, logicOn: []int{2, 3}, region: func(int) string { return "r1" }})
	var cs []*fclient
	for u := range 120 {
		cs = append(cs, f.dial(uint64(1+u), false))
	}
	n := spread(f, cs)
	t.Logf("clients per host (IDC A = h0,h1; IDC B = h2,h3): %v", n)
	acked := sendRing(t, cs, "before")
	var moved []*fclient
	for _, fc := range cs {
		if h := f.hostOf(fc); h == 0 || h == 1 {
			moved = append(moved, fc)
		}
	}
	if len(moved) == 0 {
		t.Fatal("no client in IDC A")
	}
	at := time.Now()
	how := "cut"
	for _, h := range []int{0, 1} {
		f.down[h] = true
		if err := f.b.Host(h).Cut(); errors.Is(err, testbed.ErrUnsupported) {
			how = "killed"
			f.b.Host(h).KillAll()
		} else if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("IDC A %s (%d clients)", how, len(moved))
	deadline := at.Add(20 * time.Second)
	for {
		left := 0
		for _, fc := range moved {
			if h := f.hostOf(fc); h != 2 && h != 3 {
				left++
			}
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d clients of IDC A not in IDC B within 20s", left, len(moved))
		}
		time.Sleep(20 * time.Millisecond)
	}
	var since []time.Duration
	for _, fc := range moved {
		fc.mu.Lock()
		since = append(since, fc.lastUp.Sub(at))
		fc.mu.Unlock()
	}
	t.Logf("IDC A's clients in IDC B: failure→AUTH_OK %s (bound 20s)", pct(since))
	lat := f.pushAll(2, moved, 400, 15*time.Second)
	t.Logf("push to them via h2: %s (%v after the failure)", pct(lat), time.Since(at).Round(time.Millisecond))
	checkSynced(t, cs, acked)
	t.Logf("synced %v after the failure", time.Since(at).Round(time.Millisecond))
	// The NATS routes to the cut node must be noticed in seconds (push/
	// embedded.go's route pings): with nats-server's 2 min default its
	// interest swallowed the store's reads and this took 79 s.
	if d := time.Since(at); d > 40*time.Second {
		t.Fatalf("every receiver synced only %v after the failure (bound 40s)", d.Round(time.Second))
	}
	checkSynced(t, cs, sendRing(t, cs, "after"))
	t.Logf("sent and synced again %v after the failure", time.Since(at).Round(time.Millisecond))
}

// waitFor polls ok until it holds (testutil.WaitFor).
func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	testutil.WaitFor(t, what, d, ok)
}

// TestFleetLoadToolHostKill runs the load tool in the client namespace
// against the three hosts (--targets, --fleet-pins, --reconnect): its
// connections spread over the hosts, a host is killed (kill -9 of every
// process), and the tool's report gives the reconnect time distribution
// of the connections that were on it; all are held again at the end.
// LONGLINK_FLEET_CONNS sets the size (default 3000; `make fleet-scale`
// runs 30,000).
func TestFleetLoadToolHostKill(t *testing.T) {
	conns := 3000
	if v := os.Getenv("LONGLINK_FLEET_CONNS"); v != "" {
		fmt.Sscan(v, &conns)
	}
	noFleet := os.Getenv("LONGLINK_FLEET_OFF") == "1" // the A/B of the memory figure: gateways with --fleet=false
	f := startFleet(t, spec{hosts: 3, natsOn: []int{0, 1, 2}, logicOn: []int{0, 1}, region: func(int) string { return "r1" }, conns: 20000, noFleet: noFleet})
	c := f.b.Client()
	var targets []string
	for _, h := range f.b.Hosts() {
		targets = append(targets, h.Addr(pGateway))
	}
	rss0 := f.gatewayRSS(0)
	out := filepath.Join(f.b.Dir(), "load.json")
	dur := 25*time.Second + time.Duration(conns/2000)*time.Second // room for the pushes before the kill
	p, err := c.Start("loadtest", []string{bin, "loadtest", "--targets", strings.Join(targets, ","), "--allow-remote",
		"--sources", c.IPs[0] + "-" + c.IPs[len(c.IPs)-1], "--conns", fmt.Sprint(conns), "--rate", "2000",
		"--duration", dur.String(), "--keys", filepath.Join(f.shared, "keys.json"), "--fleet-pins", strings.Join(f.pins, ","),
		"--reconnect", "--admin", f.b.Host(0).Addr(pAdmin), "--heartbeat", "5s", "--timeout", "5s", "--json", out, "--quiet", "--max-fail", "1"})
	if err != nil {
		t.Fatal(err)
	}
	ramp := time.Duration(conns/2000+2) * time.Second
	time.Sleep(ramp + 2*time.Second)
	var before []int
	for i := range 3 {
		if noFleet {
			before = append(before, conns/3) // --targets round-robin
		} else {
			before = append(before, f.gatewayConns(i))
		}
	}
	if rss1 := f.gatewayRSS(0); rss0 > 0 && rss1 > rss0 && before[0] > 0 {
		t.Logf("h0's gateway processes (fleet on, list in every AUTH_OK): anonymous RSS %d → %d KiB for %d connections: %.0f bytes per connection",
			rss0>>10, rss1>>10, before[0], float64(rss1-rss0)/float64(before[0]))
	}
	// A push to any user from any host's PushService: each host's router
	// finds every load-tool user, wherever the lists put it (routed, not
	// offline), and the tool's clients receive all three pushes (one type
	// per host, so none is merged with another).
	if !noFleet {
		for i := range 3 {
			routed, offline := f.multicastAll(i, 1000000, conns, uint32(21+i))
			t.Logf("multicast to all %d load-tool users from h%d's PushService: %d routed, %d offline", conns, i, routed, offline)
			if routed < conns*99/100 {
				t.Fatalf("h%d's router found %d of %d users (%d offline)", i, routed, conns, offline)
			}
		}
		time.Sleep(2 * time.Second) // deliveries land before the kill
	}
	killAt := time.Now()
	f.b.Host(2).KillAll()
	t.Logf("connections per host before the kill: %v; killed h2 at %v", before, killAt.Format("15:04:05.000"))
	time.Sleep(6 * time.Second) // reconnects done, announced (500 ms interval)
	if !noFleet {
		moved := []int{f.gatewayConns(0) - before[0], f.gatewayConns(1) - before[1]}
		t.Logf("the killed host's connections went %v to h0, h1", moved)
		if moved[0] < before[2]/5 || moved[1] < before[2]/5 {
			t.Errorf("the killed host's connections were not spread: %v", moved)
		}
	}
	select {
	case <-p.Done():
	case <-time.After(dur + 60*time.Second):
		t.Fatal("the load tool did not finish")
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("no report: %v\n%s", err, p.Log())
	}
	var r struct {
		Established int64            `json:"conns_established"`
		Counters    map[string]int64 `json:"counters"`
		Latency     map[string]struct {
			Count int64   `json:"count"`
			P50   float64 `json:"p50_ms"`
			P99   float64 `json:"p99_ms"`
			Max   float64 `json:"max_ms"`
		} `json:"latency"`
		Errors     map[string]int64 `json:"errors"`
		AnonGrowth float64          `json:"gateway_anon_bytes_per_conn_growth"`
		RSSGrowth  float64          `json:"gateway_bytes_per_conn_growth"`
		GwConns    int64            `json:"gateway_conns"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	t.Logf("h0's memory per connection by the load tool (its /metrics, baseline before the ramp; fleet %v): anonymous growth %.0f B, RSS growth %.0f B, %d connections at the end",
		!noFleet, r.AnonGrowth, r.RSSGrowth, r.GwConns)
	rc := r.Latency["reconnect"]
	t.Logf("load tool: %d connections, reconnects after h2's kill: n=%d p50=%.0fms p99=%.0fms max=%.0fms; counters open=%d; errors %v",
		conns, rc.Count, rc.P50, rc.P99, rc.Max, r.Counters["open"], r.Errors)
	if before[2] == 0 || rc.Count < int64(before[2])*9/10 {
		t.Fatalf("%d reconnects for %d connections on the killed host", rc.Count, before[2])
	}
	if rc.Max > 15000 {
		t.Fatalf("reconnect max %.0f ms over the 15 s bound", rc.Max)
	}
	if r.Counters["open"] < int64(conns)*99/100 {
		t.Fatalf("%d of %d connections held at the end", r.Counters["open"], conns)
	}
	if !noFleet {
		// Three pushes per user, plus the "sync everything" ones workers
		// send after their NATS node (h2's) went away.
		t.Logf("pushes received by the load tool's clients: %d (3 per user: %d)", r.Counters["push_recv"], 3*conns)
		if r.Counters["push_recv"] < int64(3*conns)*99/100 {
			t.Fatalf("the tool's clients received %d pushes, want ≥ 99%% of %d", r.Counters["push_recv"], 3*conns)
		}
	}
}

// multicastAll sends one push of type typ to the n load-tool users from
// uid base on through host i's PushService, in batches, and sums the
// replies.
func (f *fleetBed) multicastAll(i int, base uint64, n int, typ uint32) (routed, offline int) {
	f.t.Helper()
	api := f.pushClient(i)
	for lo := 0; lo < n; lo += 1000 {
		uids := make([]uint64, 0, 1000)
		for u := lo; u < min(n, lo+1000); u++ {
			uids = append(uids, base+uint64(u))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		rep, err := api.Multicast(ctx, &pb.MulticastRequest{Uids: uids, Type: typ, Version: 1})
		cancel()
		if err != nil {
			f.t.Fatalf("multicast via h%d: %v", i, err)
		}
		routed += int(rep.Routed)
		offline += int(rep.Offline)
	}
	return routed, offline
}

// gatewayConns is host i's live connection count from the fleet view (GET
// /fleet on its admin port).
func (f *fleetBed) gatewayConns(i int) int {
	tok, _ := os.ReadFile(filepath.Join(f.hostDir(i), "admin.token"))
	req, _ := http.NewRequest(http.MethodGet, "http://"+f.b.Host(i).Addr(pAdmin)+"/fleet", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := f.hc.Do(req)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var v struct {
		Host  string `json:"host"`
		Hosts []struct {
			ID    string `json:"id"`
			Conns int    `json:"conns"`
		} `json:"hosts"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&v)
	for _, h := range v.Hosts {
		if h.ID == fmt.Sprint("h", i) {
			return h.Conns
		}
	}
	return -1
}

// gatewayRSS sums RssAnon (bytes: heap and stacks, the executable's file
// pages left out, as the gateway's own per-connection figure) over host
// i's gateway processes (the supervisor and its workers); 0 when unknown.
func (f *fleetBed) gatewayRSS(i int) int64 {
	var sum int64
	for _, pid := range f.b.Host(i).Pids() {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if !strings.Contains(string(cmd), "gateway") {
			continue
		}
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		for _, l := range strings.Split(string(st), "\n") {
			if v, ok := strings.CutPrefix(l, "RssAnon:"); ok {
				var kb int64
				fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
				sum += kb << 10
			}
		}
	}
	return sum
}
