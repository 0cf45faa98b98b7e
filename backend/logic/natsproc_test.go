package logic

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/longlink/longlink/internal/testutil"
)

// TestMain lets the test binary be a NATS node of its own (for kill -9):
// with LONGLINK_TEST_NATS_NODE set it serves until killed.
func TestMain(m *testing.M) {
	if spec := os.Getenv("LONGLINK_TEST_NATS_NODE"); spec != "" {
		runNodeProcess(spec)
		return
	}
	os.Exit(m.Run())
}

// nodeSpec is a NATS node process's configuration.
type nodeSpec struct {
	Name, Dir                   string
	Port, ClusterPort, HTTPPort int
	Routes                      []int
}

func runNodeProcess(spec string) {
	var s nodeSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	opts := &server.Options{
		ServerName: s.Name, Host: "127.0.0.1", Port: s.Port, HTTPHost: "127.0.0.1", HTTPPort: s.HTTPPort,
		NoSigs: true, NoLog: true, JetStream: true, StoreDir: s.Dir,
		Cluster: server.ClusterOpts{Name: "ll", Host: "127.0.0.1", Port: s.ClusterPort},
	}
	for _, r := range s.Routes {
		opts.Routes = append(opts.Routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", r)})
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ns.Start()
	// Die with the test: a lost parent closes stdin.
	go func() {
		b := make([]byte, 1)
		os.Stdin.Read(b)
		os.Exit(0)
	}()
	select {}
}

// procCluster is n NATS nodes, each its own process, clustered with
// JetStream; a node can be killed with SIGKILL and restarted.
type procCluster struct {
	t     *testing.T
	specs []nodeSpec
	cmds  []*exec.Cmd
}

func startProcCluster(t *testing.T, n int) *procCluster {
	t.Helper()
	c := &procCluster{t: t, cmds: make([]*exec.Cmd, n)}
	base := t.TempDir()
	for i := range n {
		c.specs = append(c.specs, nodeSpec{Name: fmt.Sprint("n", i), Dir: filepath.Join(base, fmt.Sprint("n", i)),
			Port: testutil.FreePort(t), ClusterPort: testutil.FreePort(t), HTTPPort: testutil.FreePort(t)})
	}
	for i := range n {
		for j := range n {
			if j != i {
				c.specs[i].Routes = append(c.specs[i].Routes, c.specs[j].ClusterPort)
			}
		}
	}
	for i := range n {
		c.start(i)
	}
	t.Cleanup(func() {
		for i := range c.cmds {
			c.kill(i)
		}
	})
	c.waitStreams("", 0)
	return c
}

func (c *procCluster) start(i int) {
	c.t.Helper()
	b, _ := json.Marshal(c.specs[i])
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "LONGLINK_TEST_NATS_NODE="+string(b))
	if _, err := cmd.StdinPipe(); err != nil {
		c.t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.cmds[i] = cmd
	deadline := time.Now().Add(20 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", c.specs[i].Port), time.Second)
		if err == nil {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("NATS node %d did not start: %v", i, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill sends SIGKILL: no flush, no goodbye to the peers.
func (c *procCluster) kill(i int) {
	if cmd := c.cmds[i]; cmd != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		c.cmds[i] = nil
	}
}

func (c *procCluster) url() string {
	var us []string
	for _, s := range c.specs {
		us = append(us, fmt.Sprintf("nats://127.0.0.1:%d", s.Port))
	}
	return strings.Join(us, ",")
}

// jsz is a node's own view (its /jsz monitoring endpoint).
type jsz struct {
	MetaCluster *struct {
		Leader string `json:"leader"`
	} `json:"meta_cluster"`
	AccountDetails []struct {
		Streams []struct {
			Name    string `json:"name"`
			Cluster *struct {
				Leader string `json:"leader"`
			} `json:"cluster"`
			State struct {
				LastSeq uint64 `json:"last_seq"`
				Msgs    uint64 `json:"messages"`
			} `json:"state"`
		} `json:"stream_detail"`
	} `json:"account_details"`
}

func (c *procCluster) jsz(i int) (jsz, error) {
	var z jsz
	cl := http.Client{Timeout: 2 * time.Second}
	r, err := cl.Get(fmt.Sprintf("http://127.0.0.1:%d/jsz?accounts=true&streams=true", c.specs[i].HTTPPort))
	if err != nil {
		return z, err
	}
	defer r.Body.Close()
	return z, json.NewDecoder(r.Body).Decode(&z)
}

// stream returns node i's view of a stream: its leader and last sequence.
func (c *procCluster) stream(i int, name string) (leader string, last uint64, ok bool) {
	leader, last, _, ok = c.streamState(i, name)
	return leader, last, ok
}

// streamState is node i's view of a stream: its leader, last sequence and
// message count.
func (c *procCluster) streamState(i int, name string) (leader string, last, msgs uint64, ok bool) {
	z, err := c.jsz(i)
	if err != nil {
		return "", 0, 0, false
	}
	for _, ad := range z.AccountDetails {
		for _, s := range ad.Streams {
			if s.Name == name {
				if s.Cluster != nil {
					leader = s.Cluster.Leader
				}
				return leader, s.State.LastSeq, s.State.Msgs, true
			}
		}
	}
	return "", 0, 0, false
}

// waitStreams waits for a meta leader on every node (stream "" ) or for
// every running node to hold stream at the same last sequence >= min and
// the same message count.
func (c *procCluster) waitStreams(stream string, min uint64) {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok := true
		var seq, msgs uint64
		for i := range c.specs {
			if c.cmds[i] == nil {
				continue
			}
			if stream == "" {
				z, err := c.jsz(i)
				ok = ok && err == nil && z.MetaCluster != nil && z.MetaCluster.Leader != ""
				continue
			}
			_, last, n, found := c.streamState(i, stream)
			if !found || last < min || (seq != 0 && (last != seq || n != msgs)) {
				ok = false
			}
			seq, msgs = last, n
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			var views []string
			for i := range c.specs {
				l, last, n, found := c.streamState(i, stream)
				views = append(views, fmt.Sprintf("n%d: leader %q last %d messages %d found %v running %v", i, l, last, n, found, c.cmds[i] != nil))
			}
			c.t.Fatalf("nodes did not converge on stream %q (want last >= %d): %s", stream, min, strings.Join(views, "; "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
