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
}

func startCluster(t testing.TB, n int) *natsCluster {
	t.Helper()
	c := &natsCluster{t: t, nodes: make([]*server.Server, n), ports: make([]int, n), cport: make([]int, n)}
	base := t.TempDir()
	for i := range n {
		c.dirs = append(c.dirs, filepath.Join(base, fmt.Sprint("n", i)))
		c.ports[i], c.cport[i] = server.RANDOM_PORT, server.RANDOM_PORT
	}
	for i := range n {
		c.start(i)
	}
	t.Cleanup(func() {
		for _, ns := range c.nodes {
			if ns != nil {
				ns.Shutdown()
			}
		}
	})
	// Wait for a JetStream meta leader.
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, ns := range c.nodes {
			if ns.JetStreamIsLeader() {
				return c
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no JetStream meta leader")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *natsCluster) start(i int) {
	c.t.Helper()
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
	ns, err := server.NewServer(opts)
	if err != nil {
		c.t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		c.t.Fatal("NATS node did not start")
	}
	c.nodes[i] = ns
	c.ports[i] = portOf(ns.ClientURL())
	if ca := ns.ClusterAddr(); ca != nil {
		c.cport[i] = ca.Port
	}
}

func portOf(u string) int {
	var p int
	fmt.Sscanf(u[strings.LastIndexByte(u, ':')+1:], "%d", &p)
	return p
}

// kill stops node i at once (its store directory stays).
func (c *natsCluster) kill(i int) {
	c.nodes[i].Shutdown()
	c.nodes[i].WaitForShutdown()
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
