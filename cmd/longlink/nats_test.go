package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/backend/logic"
	"github.com/longlink/longlink/internal/testutil"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/push"
)

// natsNode is one `longlink nats` child process.
type natsNode struct {
	args               string
	port, cluster, mon int
	cmd                *exec.Cmd
}

func (n *natsNode) start(t *testing.T) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "LONGLINK_TEST_ARGS="+n.args)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // dies with the test
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.cmd = cmd
}

func (n *natsNode) kill() {
	if n.cmd != nil {
		_ = n.cmd.Process.Kill()
		_ = n.cmd.Wait()
		n.cmd = nil
	}
}

func (n *natsNode) metaLeader() string {
	return testutil.MetaLeader(&http.Client{Timeout: time.Second}, fmt.Sprintf("127.0.0.1:%d", n.mon), 3)
}

// TestNATSCommandThreeNodeCluster runs three `longlink nats` processes on
// loopback with one shared nats.secret: they form a JetStream cluster
// (routes authenticated with the derived route password); push routing
// works across nodes with the gateway/pusher roles; a wrong secret is
// refused; the replicated logic store (replicas=3, role "store") takes
// sends, and keeps taking them after one node is killed with SIGKILL.
func TestNATSCommandThreeNodeCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("runs NATS node processes")
	}
	dir := t.TempDir()
	secretPath := filepath.Join(dir, "nats.secret")
	secret, _, err := push.LoadOrCreateSecret(secretPath)
	if err != nil {
		t.Fatal(err)
	}
	nodes := make([]*natsNode, 3)
	for i := range nodes {
		nodes[i] = &natsNode{port: testutil.FreePort(t), cluster: testutil.FreePort(t), mon: testutil.FreePort(t)}
	}
	var urls []string
	for i, n := range nodes {
		var routes []string
		for j, m := range nodes {
			if j != i {
				routes = append(routes, fmt.Sprintf("127.0.0.1:%d", m.cluster))
			}
		}
		n.args = fmt.Sprintf("nats --name n%d --listen 127.0.0.1:%d --cluster-listen 127.0.0.1:%d --routes %s --monitor 127.0.0.1:%d --data %s --secret %s --log-level warn",
			i, n.port, n.cluster, strings.Join(routes, ","), n.mon, filepath.Join(dir, fmt.Sprint("n", i)), secretPath)
		n.start(t)
		t.Cleanup(n.kill)
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", n.port))
	}
	deadline := time.Now().Add(40 * time.Second)
	for {
		l0, l1, l2 := nodes[0].metaLeader(), nodes[1].metaLeader(), nodes[2].metaLeader()
		if l0 != "" && l0 == l1 && l1 == l2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no common JetStream meta leader: %q %q %q", l0, l1, l2)
		}
		time.Sleep(100 * time.Millisecond)
	}
	all := strings.Join(urls, ",")
	log := newLogger("warn", "text", -1)

	// Routing across nodes: a router's subscription on n0 hears a pusher on n2.
	gw, err := push.Connect(urls[0], "t-router", log, push.ClientAuth{Secret: secret}.As(push.RoleRouter))
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	subj := push.SubjectNotify
	sub, err := gw.SubscribeSync(subj)
	if err != nil {
		t.Fatal(err)
	}
	if err := gw.Flush(); err != nil {
		t.Fatal(err)
	}
	pu, err := push.Connect(urls[2], "t-pusher", log, push.ClientAuth{Secret: secret}.As(push.RolePusher))
	if err != nil {
		t.Fatal(err)
	}
	defer pu.Close()
	got := false
	for try := 0; try < 50 && !got; try++ { // the route's interest propagates asynchronously
		if err := pu.Publish(subj, []byte("x")); err != nil {
			t.Fatal(err)
		}
		_ = pu.Flush()
		_, err := sub.NextMsg(100 * time.Millisecond)
		got = err == nil
	}
	if !got {
		t.Fatal("a publish on n2 did not reach the subscriber on n0")
	}

	// A wrong secret is refused.
	if nc, err := nats.Connect(urls[1], nats.UserInfo(string(push.RoleGateway), "wrong"), nats.Timeout(2*time.Second), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("a wrong password was accepted")
	}

	// The replicated logic store over the cluster, and a node's kill -9.
	st, err := logic.OpenStore(all+"?replicas=3", logic.StoreOptions{SecretFile: secretPath, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	l, err := logic.New(st, logic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	send := func(text string) error {
		body, _ := proto.Marshal(&pb.SendRequest{To: 2, Text: text, ClientMsgId: text})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := l.Call(ctx, &backend.Request{UID: 1, Device: "d", Method: logic.MethodSend, Body: body})
		return err
	}
	if err := send("before"); err != nil {
		t.Fatal(err)
	}
	nodes[0].kill()
	start := time.Now()
	for {
		err := send("after")
		if err == nil {
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("sends still fail 30s after a node's kill -9: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("send after kill -9 of n0 succeeded in %v", time.Since(start).Round(time.Millisecond))
}

// TestNATSCommandFlags: bad combinations are refused with the flag named.
func TestNATSCommandFlags(t *testing.T) {
	for _, c := range []struct {
		f    natsNodeFlags
		want string
	}{
		{natsNodeFlags{listen: "10.0.0.1:4222"}, "--listen 10.0.0.1:4222 is not on loopback"},
		{natsNodeFlags{listen: "127.0.0.1:4222", routes: "127.0.0.1:6222"}, "--routes needs --cluster-listen"},
		{natsNodeFlags{listen: "127.0.0.1:4222", clusterListen: "10.0.0.1:6222"}, "--cluster-listen 10.0.0.1:6222 is not on loopback"},
		{natsNodeFlags{listen: "127.0.0.1:4222", clusterListen: "127.0.0.1:0"}, "want a port"},
		{natsNodeFlags{listen: "127.0.0.1:4222", tlsCert: "x"}, "--tls-cert and --tls-key go together"},
		{natsNodeFlags{listen: "127.0.0.1:4222", name: "a.b"}, "--name"},
		{natsNodeFlags{listen: "nope"}, "--listen"},
	} {
		_, err := natsNodeConfig(c.f)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want %q", c.f, err, c.want)
		}
	}
	cfg, err := natsNodeConfig(natsNodeFlags{listen: "10.0.0.1:4222", clusterListen: "10.0.0.1:6222", routes: "10.0.0.2:6222,nats-route://10.0.0.3:6222", plaintextOK: true, dataDir: "/d"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.JetStreamDir != "/d/nats" || len(cfg.Routes) != 2 || cfg.Routes[0] != "nats-route://10.0.0.2:6222" {
		t.Fatalf("config %+v", cfg)
	}
}
