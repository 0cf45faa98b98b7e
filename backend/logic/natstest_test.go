package logic

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/longlink/longlink/internal/testutil"
)

// natsCluster is n embedded NATS servers with JetStream, clustered on
// 127.0.0.1 with random ports; a node can be killed and restarted on its
// store directory.
type natsCluster struct {
	t     testing.TB
	dirs  []string
	nodes []*server.Server
	ports []int // client ports, kept across restarts
	cport []int // cluster ports
	mu    sync.Mutex
}

func startCluster(t testing.TB, n int) *natsCluster {
	t.Helper()
	c := &natsCluster{t: t, nodes: make([]*server.Server, n), ports: make([]int, n), cport: make([]int, n)}
	base := t.TempDir()
	// Routes must name every node's cluster port up front: take free
	// ports, then start the nodes together (a clustered node is not ready
	// before it has peers).
	for i := range n {
		c.dirs = append(c.dirs, filepath.Join(base, fmt.Sprint("n", i)))
		c.ports[i], c.cport[i] = server.RANDOM_PORT, testutil.FreePort(t)
	}
	if n == 1 {
		c.cport[0] = 0
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); c.start(i) }()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Cleanup(func() {
		for _, ns := range c.nodes {
			if ns != nil {
				ns.Shutdown()
			}
		}
	})
	c.waitFormed()
	return c
}

// waitFormed waits for every node to be routed to the others and current
// with a JetStream meta leader.
func (c *natsCluster) waitFormed() {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		leader, ok := false, true
		for _, ns := range c.nodes {
			if ns == nil || !ns.Running() {
				continue
			}
			leader = leader || ns.JetStreamIsLeader()
			ok = ok && ns.JetStreamIsCurrent() && ns.NumRoutes() >= len(c.nodes)-1
		}
		if leader && ok {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatal("the NATS cluster did not form")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *natsCluster) start(i int) {
	c.t.Helper()
	c.mu.Lock()
	opts := &server.Options{
		ServerName: fmt.Sprint("n", i), Host: "127.0.0.1", Port: c.ports[i],
		NoSigs: true, NoLog: true, JetStream: true, StoreDir: c.dirs[i],
	}
	if len(c.nodes) > 1 {
		opts.Cluster = server.ClusterOpts{Name: "ll", Host: "127.0.0.1", Port: c.cport[i]}
		for j := range c.nodes {
			if j != i && c.cport[j] > 0 {
				opts.Routes = append(opts.Routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", c.cport[j])})
			}
		}
	}
	c.mu.Unlock()
	ns, err := server.NewServer(opts)
	if err != nil {
		c.t.Error(err)
		return
	}
	go ns.Start()
	if !ns.ReadyForConnections(20 * time.Second) {
		c.t.Error("NATS node did not start")
	}
	c.mu.Lock()
	c.nodes[i] = ns
	c.ports[i] = portOf(ns.ClientURL())
	c.mu.Unlock()
}

func portOf(u string) int {
	var p int
	fmt.Sscanf(u[strings.LastIndexByte(u, ':')+1:], "%d", &p)
	return p
}

// url lists every node, for a client that fails over between them.
func (c *natsCluster) url() string {
	var us []string
	for _, p := range c.ports {
		us = append(us, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	return strings.Join(us, ",")
}

func (c *natsCluster) connect(t testing.TB) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(c.url(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.Timeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// openJS opens a JetStream store on the cluster (stream named after name).
func (c *natsCluster) openJS(t testing.TB, name string) Store {
	t.Helper()
	st, err := OpenJetStream(JSConfig{Conn: c.connect(t), Stream: name, Prefix: strings.ToLower(name), Replicas: len(c.nodes)})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// With LONGLINK_TEST_STORE=jetstream the package's tests run on one
// embedded JetStream server instead of bbolt (a path names a stream, so
// restart tests reopen the same data).
var (
	sharedOnce sync.Once
	shared     *natsCluster
)

func testStore(t testing.TB, path string) Store {
	t.Helper()
	if os.Getenv("LONGLINK_TEST_STORE") != "jetstream" {
		st, err := OpenBolt(path)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	sharedOnce.Do(func() { shared = startCluster(&noCleanupTB{t}, 1) })
	h := sha256.Sum256([]byte(path))
	return shared.openJS(t, "T"+hex.EncodeToString(h[:6]))
}

// noCleanupTB keeps the shared server alive past the first test.
type noCleanupTB struct{ testing.TB }

func (noCleanupTB) Cleanup(func()) {}
func (n noCleanupTB) TempDir() string {
	d, err := os.MkdirTemp("", "llnats")
	if err != nil {
		n.Fatal(err)
	}
	return d
}
