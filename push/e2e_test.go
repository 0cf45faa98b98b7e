package push_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/client"
	"github.com/longlink/longlink/internal/testutil"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/push"
)

// checkFor polls fn until it returns nil or timeout passes (testutil.CheckFor).
func checkFor(t *testing.T, timeout time.Duration, fn func() error) {
	t.Helper()
	testutil.CheckFor(t, timeout, fn)
}

// runLonglink starts the longlink binary with args (its output on the
// test's stderr) and kills it at cleanup.
func runLonglink(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(testutil.Longlink(t), args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	})
	return cmd
}

// gatewayProc runs `longlink gateway --workers N` with push on.
type gatewayProc struct {
	addr, grpc, admin string
	keys              *auth.KeySet
	token             string // PushService bearer token (<data>/push.token)
	dir               string
}

// gatewayArgs are the flags that keep a test gateway off every default
// port: each listener it does not test is on a port of its own or off.
func gatewayArgs(g *gatewayProc, workers int) []string {
	return []string{"gateway", "--workers", strconv.Itoa(workers), "--listen", g.addr, "--admin", g.admin, "--data", g.dir,
		"--http", "", "--push-grpc", g.grpc, "--nats-listen", "127.0.0.1:0", "--shake-ledger-admin", "",
		"--log-level", "error", "--loops", "1"}
}

func newGatewayProc(t *testing.T) *gatewayProc {
	t.Helper()
	dir := t.TempDir()
	keys, _, err := auth.LoadOrCreate(auth.KeyFile(dir))
	if err != nil {
		t.Fatal(err)
	}
	return &gatewayProc{addr: testutil.FreeAddr(t), grpc: testutil.FreeAddr(t),
		admin: testutil.FreeAddr(t), keys: keys, dir: dir}
}

func startGateway(t *testing.T, workers int, extra ...string) *gatewayProc {
	t.Helper()
	g := newGatewayProc(t)
	runLonglink(t, append(gatewayArgs(g, workers), extra...)...)
	checkFor(t, 20*time.Second, func() error {
		for _, a := range []string{g.addr, g.grpc} {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err != nil {
				return err
			}
			c.Close()
		}
		tok, _, err := push.LoadOrCreateToken(filepath.Join(g.dir, push.PushTokenFile), false)
		g.token = tok
		return err
	})
	return g
}

// pushClient dials the gateway's PushService with its token.
func pushClient(t *testing.T, g *gatewayProc, opts ...grpc.DialOption) pb.PushServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(g.grpc, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(push.BearerToken(g.token))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return pb.NewPushServiceClient(cc)
}

// callCtx is the deadline of one test call: nothing in a test waits forever.
func callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

// store is the logic service's view: the current version per (user, type).
type store struct {
	mu sync.Mutex
	v  map[[2]uint64]uint64
}

func (s *store) bump(uid uint64, typ uint32) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := [2]uint64{uid, uint64(typ)}
	s.v[k]++
	return s.v[k]
}

func (s *store) get(uid uint64, typ uint32) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.v[[2]uint64{uid, uint64(typ)}]
}

const e2eTypes = 3

// device is one simulated app: it syncs on connect and on PUSH type 0, takes
// the version of every other PUSH, and checks that versions pushed on one
// client never go backwards.
type device struct {
	uid    uint64
	name   string
	st     *store
	mu     sync.Mutex
	state  [e2eTypes + 1]uint64
	cl     *client.Client
	errs   []string
	pushes atomic.Int64
}

func (d *device) sync() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for typ := uint32(1); typ <= e2eTypes; typ++ {
		d.state[typ] = max(d.state[typ], d.st.get(d.uid, typ))
	}
}

func (d *device) onPush(pushed *[e2eTypes + 1]uint64, p *pb.Push) {
	if p.Type == 0 {
		d.sync()
		return
	}
	d.pushes.Add(1)
	d.mu.Lock()
	defer d.mu.Unlock()
	if p.Type == e2eTypes+1 {
		return // the routability probe
	}
	if p.Type > e2eTypes {
		d.errs = append(d.errs, fmt.Sprintf("unknown type %d", p.Type))
		return
	}
	if p.Version <= pushed[p.Type] {
		d.errs = append(d.errs, fmt.Sprintf("uid %d %s type %d: pushed %d after %d", d.uid, d.name, p.Type, p.Version, pushed[p.Type]))
	}
	pushed[p.Type] = p.Version
	d.state[p.Type] = max(d.state[p.Type], p.Version)
}

func (d *device) dial(t *testing.T, g *gatewayProc) {
	tok, err := g.keys.Mint(d.uid, d.name, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	// Each client checks its own pushes: the client closed by churn may
	// still hand over a PUSH it read before Close, and the same version
	// then reaching the new connection is not a duplicate on either.
	// The SDK's own reconnects start a new server connection too, so
	// Connected starts a new array.
	pushed := new([e2eTypes + 1]uint64)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.Dial(ctx, client.Options{
		Addr: g.addr, Token: tok, Device: d.name, BackoffMin: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond,
		OnPush: func(p *pb.Push) {
			d.mu.Lock()
			cur := pushed
			d.mu.Unlock()
			d.onPush(cur, p)
		},
		OnState: func(s client.State, _ error) {
			if s == client.Connected {
				d.mu.Lock()
				pushed = new([e2eTypes + 1]uint64)
				d.mu.Unlock()
				d.sync()
			}
		},
	})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	d.sync() // the SDK may report Connected before Dial returns; sync again
	d.cl = cl
}

// churn runs random notifies (gRPC Notify and Multicast) at random users
// while clients disconnect and reconnect; mid runs halfway. Every client must
// end with the latest version of every type, and none may see a pushed
// version go backwards.
func churn(t *testing.T, g *gatewayProc, users int, dur time.Duration, mid func()) {
	st := &store{v: map[[2]uint64]uint64{}}
	var devs []*device
	for u := 1; u <= users; u++ {
		for _, name := range []string{"phone", "pad"}[:1+u%2] {
			d := &device{uid: uint64(u), name: name, st: st}
			d.dial(t, g)
			devs = append(devs, d)
		}
	}
	defer func() {
		for _, d := range devs {
			d.cl.Close()
		}
	}()
	api := pushClient(t, g)
	// Wait until every user is routable: the first notifies must not race
	// the registry (the grace replay covers reconnects later).
	checkFor(t, 10*time.Second, func() error {
		ctx, cancel := callCtx()
		defer cancel()
		rep, err := api.Multicast(ctx, &pb.MulticastRequest{Uids: seq(users), Type: e2eTypes + 1})
		if err != nil || rep.Offline > 0 {
			return fmt.Errorf("multicast probe: %v %v", rep, err)
		}
		return nil
	})

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var calls, failed atomic.Int64
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for {
				select {
				case <-stop:
					return
				default:
				}
				typ := uint32(1 + rng.IntN(e2eTypes))
				var err error
				ctx, cancel := callCtx()
				if rng.IntN(10) == 0 {
					uids := []uint64{uint64(1 + rng.IntN(users)), uint64(1 + rng.IntN(users))}
					if uids[0] == uids[1] {
						cancel()
						continue
					}
					// One version per user: bump both, send each its own
					// (multicast carries one version, so use it when equal).
					v0, v1 := st.bump(uids[0], typ), st.bump(uids[1], typ)
					if v0 == v1 {
						_, err = api.Multicast(ctx, &pb.MulticastRequest{Uids: uids, Type: typ, Version: v0})
					} else {
						_, err = api.Notify(ctx, &pb.NotifyRequest{Uid: uids[0], Type: typ, Version: v0})
						if err == nil {
							_, err = api.Notify(ctx, &pb.NotifyRequest{Uid: uids[1], Type: typ, Version: v1})
						}
					}
				} else {
					uid := uint64(1 + rng.IntN(users))
					v := st.bump(uid, typ)
					_, err = api.Notify(ctx, &pb.NotifyRequest{Uid: uid, Type: typ, Version: v, Payload: []byte("x")})
				}
				cancel()
				calls.Add(1)
				if err != nil {
					failed.Add(1)
				}
				time.Sleep(time.Duration(rng.IntN(500)) * time.Microsecond)
			}
		}()
	}
	wg.Add(1)
	go func() { // reconnects
		defer wg.Done()
		rng := rand.New(rand.NewPCG(9, 9))
		for {
			select {
			case <-stop:
				return
			case <-time.After(30 * time.Millisecond):
			}
			d := devs[rng.IntN(len(devs))]
			d.cl.Close()
			d.dial(t, g)
		}
	}()
	time.Sleep(dur / 2)
	if mid != nil {
		mid()
	}
	time.Sleep(dur / 2)
	close(stop)
	wg.Wait()

	checkFor(t, 20*time.Second, func() error {
		for _, d := range devs {
			d.mu.Lock()
			for typ := uint32(1); typ <= e2eTypes; typ++ {
				if have, want := d.state[typ], st.get(d.uid, typ); have != want {
					d.mu.Unlock()
					return fmt.Errorf("uid %d %s type %d at version %d, latest %d", d.uid, d.name, typ, have, want)
				}
			}
			d.mu.Unlock()
		}
		return nil
	})
	var pushes int64
	for _, d := range devs {
		d.mu.Lock()
		for _, e := range d.errs {
			t.Error(e)
		}
		d.mu.Unlock()
		pushes += d.pushes.Load()
	}
	t.Logf("%d notify calls (%d failed), %d pushes received by %d devices", calls.Load(), failed.Load(), pushes, len(devs))
	if pushes < calls.Load()/4 {
		t.Errorf("only %d pushes for %d calls: delivery is mostly by sync, not push", pushes, calls.Load())
	}
}

func seq(n int) []uint64 {
	s := make([]uint64, n)
	for i := range s {
		s[i] = uint64(i + 1)
	}
	return s
}

func TestWorkersEmbeddedNATS(t *testing.T) {
	g := startGateway(t, 3)
	churn(t, g, 40, 4*time.Second, nil)
}

// TestWorkersNATSClusterNodeKilled runs the gateway against a 3-node NATS
// cluster (embedded servers clustered over loopback: CI needs nothing
// installed) and kills one node halfway.
func TestWorkersNATSClusterNodeKilled(t *testing.T) {
	const n = 3
	cports := make([]int, n)
	for i := range cports {
		cports[i] = testutil.FreePort(t)
	}
	// The cluster authenticates, as an operator's would: the router and
	// the workers come in as their roles' users (passwords from the
	// secret file they are given).
	secretFile := filepath.Join(t.TempDir(), push.SecretFile)
	secret, _, err := push.LoadOrCreateSecret(secretFile)
	if err != nil {
		t.Fatal(err)
	}
	var servers []*server.Server
	var urls []string
	for i := 0; i < n; i++ {
		var routes []string
		for j := 0; j < n; j++ {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", cports[j]))
			}
		}
		ns, err := push.StartEmbedded(push.EmbeddedConfig{Listen: "127.0.0.1:0", Name: fmt.Sprintf("n%d", i),
			ClusterListen: fmt.Sprintf("127.0.0.1:%d", cports[i]), Routes: routes, Secret: secret, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ns.Shutdown)
		servers = append(servers, ns)
		urls = append(urls, ns.ClientURL())
	}
	checkFor(t, 10*time.Second, func() error {
		for _, s := range servers {
			if s.NumRoutes() < n-1 {
				return fmt.Errorf("%s has %d routes", s.Name(), s.NumRoutes())
			}
		}
		return nil
	})
	g := startGateway(t, 3, "--nats", strings.Join(urls, ","), "--nats-secret", secretFile)
	churn(t, g, 40, 6*time.Second, func() {
		victim := servers[0] // the busiest node
		for _, s := range servers {
			if s.NumClients() > victim.NumClients() {
				victim = s
			}
		}
		t.Logf("killing NATS node %s with %d clients", victim.Name(), victim.NumClients())
		victim.Shutdown()
	})
}

// holdDefaultPorts listens on every port a default gateway (and logic)
// opens, as `make run` does, so a test that forgot to move one fails.
func holdDefaultPorts(t *testing.T) {
	t.Helper()
	for _, p := range []int{7100, 7101, 7102, 7103, 7180, 4222, 7200, 7201} {
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", p))
		if err != nil {
			continue // held already (a running gateway): just as good
		}
		t.Cleanup(func() { ln.Close() })
	}
}

// TestGatewayWithDefaultPortsHeld: the e2e gateway works while another
// gateway holds every default port (issue 17: `make test` during `make run`).
func TestGatewayWithDefaultPortsHeld(t *testing.T) {
	holdDefaultPorts(t)
	g := startGateway(t, 2)
	churn(t, g, 8, time.Second, nil)
}

// TestPushCLIAndToken: `longlink push` sends the host's push token; without
// it (another token file) PushService answers Unauthenticated.
func TestPushCLIAndToken(t *testing.T) {
	g := startGateway(t, 1)
	run := func(args ...string) (string, error) {
		cmd := exec.Command(testutil.Longlink(t), append([]string{"push", "--addr", g.grpc, "--timeout", "5s"}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("--data", g.dir, "--uid", "1", "--type", "1", "--version", "1", "notify")
	if err != nil || !strings.Contains(out, "offline") {
		t.Fatalf("push with the host token: %v\n%s", err, out)
	}
	sec, err := push.LoadSecret(filepath.Join(g.dir, push.SecretFile))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := run("--data", g.dir, "nats-password", "admin"); err != nil || strings.TrimSpace(out) != sec.Password(push.RoleAdmin) {
		t.Errorf("nats-password admin: %v %q", err, out)
	}
	bad := filepath.Join(t.TempDir(), "bad.token")
	if err := os.WriteFile(bad, []byte("not-the-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = run("--token-file", bad, "--uid", "1", "--type", "1", "--version", "2", "notify")
	if err == nil || !strings.Contains(out, "Unauthenticated") {
		t.Fatalf("push with a wrong token: %v\n%s", err, out)
	}
}

// TestGatewayStartsWithNATSDown: an unreachable --nats does not stop the
// gateway (push is advisory); /readyz says why it is not ready, naming the
// address, and becomes ready when NATS comes.
func TestGatewayStartsWithNATSDown(t *testing.T) {
	for _, workers := range []int{1, 2} { // one process; a supervisor with its hub and workers
		t.Run(fmt.Sprintf("workers=%d", workers), func(t *testing.T) { gatewayStartsWithNATSDown(t, workers) })
	}
}

func gatewayStartsWithNATSDown(t *testing.T, workers int) {
	natsPort := testutil.FreePort(t)
	natsAddr := fmt.Sprintf("127.0.0.1:%d", natsPort)
	g := newGatewayProc(t)
	args := gatewayArgs(g, workers)
	runLonglink(t, append(args, "--nats", "nats://"+natsAddr)...)
	hc := &http.Client{Timeout: 2 * time.Second}
	get := func(path string) (int, string, error) {
		resp, err := hc.Get("http://" + g.admin + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	start := time.Now()
	checkFor(t, 8*time.Second, func() error {
		code, body, err := get("/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "nats: disconnected") || !strings.Contains(body, natsAddr) {
			return fmt.Errorf("/readyz %d %q", code, body)
		}
		return nil
	})
	t.Logf("degraded and saying so after %v", time.Since(start).Round(time.Millisecond))
	checkFor(t, 10*time.Second, func() error { // alive all the same (a supervisor: once a worker runs)
		if code, body, err := get("/healthz"); err != nil || code != http.StatusOK {
			return fmt.Errorf("/healthz %d %q %v: the gateway must be alive", code, body, err)
		}
		return nil
	})
	ns, err := push.StartEmbedded(push.EmbeddedConfig{Listen: natsAddr, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	checkFor(t, 15*time.Second, func() error {
		code, body, err := get("/readyz")
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("/readyz %d %q %v", code, body, err)
		}
		return nil
	})
}
