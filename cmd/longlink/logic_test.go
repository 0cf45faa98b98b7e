package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/backend/logic"
	"github.com/longlink/longlink/backend/remote"
	"github.com/longlink/longlink/internal/testutil"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/push"
)

func timeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// forge calls sync and msg.send as user 7 the way a local process without
// the gateway's secret would, and requires both to be refused.
func forge(t *testing.T, addr string) {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cli := pb.NewLogicServiceClient(cc)
	send, _ := proto.Marshal(&pb.SendRequest{To: 8, Text: "forged", ClientMsgId: "f1"})
	sync, _ := proto.Marshal(&pb.SyncRequest{})
	for _, q := range []*pb.CallRequest{
		{Uid: 7, Device: "d", Method: logic.MethodSync, Body: sync},
		{Uid: 7, Device: "d", Method: logic.MethodSend, Body: send},
	} {
		rep, err := cli.Call(timeout(t), q)
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("%s as user 7 without credentials: got %v (reply %v), want Unauthenticated", q.Method, err, rep)
		}
	}
	// Health needs no credentials.
	h, err := healthpb.NewHealthClient(cc).Check(timeout(t), &healthpb.HealthCheckRequest{})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", h, err)
	}
}

// asGateway sends and syncs through the gateway's pool with its secret.
func asGateway(t *testing.T, addr, secretFile string) {
	t.Helper()
	secret, err := remote.LoadSecret(secretFile)
	if err != nil {
		t.Fatal(err)
	}
	c, err := remote.NewClient(remote.Config{Addrs: []string{addr}, Auth: remote.ClientAuth{Secret: secret}, Logger: testutil.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	send, _ := proto.Marshal(&pb.SendRequest{To: 8, Text: "hello", ClientMsgId: "g1"})
	if _, err := c.Call(timeout(t), &backend.Request{UID: 7, Device: "d", Method: logic.MethodSend, Body: send}); err != nil {
		t.Fatalf("msg.send with the gateway's credentials: %v", err)
	}
	sync, _ := proto.Marshal(&pb.SyncRequest{})
	b, err := c.Call(timeout(t), &backend.Request{UID: 8, Device: "d", Method: logic.MethodSync, Body: sync})
	var rep pb.SyncReply
	if err != nil || proto.Unmarshal(b, &rep) != nil || len(rep.Items) == 0 {
		t.Fatalf("sync with the gateway's credentials: %v, %d items", err, len(rep.Items))
	}
}

// TestSupervisorLogicRefusesUnauthenticatedCallers: the logic a supervisor
// serves its workers answers only callers with the secret it handed them,
// on a unix socket in its 0700 run directory.
func TestSupervisorLogicRefusesUnauthenticatedCallers(t *testing.T) {
	dir := t.TempDir()
	bf := addBackendFlags(flag.NewFlagSet("t", flag.ContinueOnError))
	gb, err := openGatewayBackend(testutil.Quiet(), backendSetup{spec: "embedded", dataDir: dir, supervisor: true, flags: bf})
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(gb.runDir)
	defer gb.close()
	var addr, secretFile string
	for i := 0; i+1 < len(gb.workerArgs); i += 2 {
		switch gb.workerArgs[i] {
		case "--backend":
			addr = strings.TrimPrefix(gb.workerArgs[i+1], "grpc://")
		case "--backend-secret":
			secretFile = gb.workerArgs[i+1]
		}
	}
	if !strings.HasPrefix(addr, "unix:"+gb.runDir+"/") || secretFile == "" {
		t.Fatalf("workers are told %v; want a unix socket in %s and a secret file", gb.workerArgs, gb.runDir)
	}
	for path, want := range map[string]os.FileMode{gb.runDir: 0o700, filepath.Dir(gb.runDir): 0o700, secretFile: 0o600} {
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != want {
			t.Fatalf("%s: %v %v, want mode %o", path, fi.Mode(), err, want)
		}
	}
	forge(t, addr)
	asGateway(t, addr, secretFile)
}

// TestLogicCommandRefusesUnauthenticatedCallers runs `longlink logic` and
// calls it as a local process without and with the secret.
func TestLogicCommandRefusesUnauthenticatedCallers(t *testing.T) {
	dir := t.TempDir()
	addr := startLogicCmd(t, "--data", dir) // its cleanup wants exit 0 on SIGTERM
	forge(t, addr)
	asGateway(t, addr, filepath.Join(dir, remote.SecretFile))
}

// TestLogicRefusesPlaintextOffLoopback: a listener on every interface
// without TLS is refused unless explicitly allowed.
func TestLogicRefusesPlaintextOffLoopback(t *testing.T) {
	if _, err := listenLogic("0.0.0.0:0", false, false); err == nil || !strings.Contains(err.Error(), "--tls-cert") {
		t.Fatalf("plaintext on every interface: %v", err)
	}
	if _, err := listenLogic(":0", false, false); err == nil {
		t.Fatal("plaintext on every interface (\":0\") was allowed")
	}
	for _, c := range []struct {
		addr       string
		tls, allow bool
	}{{"127.0.0.1:0", false, false}, {"0.0.0.0:0", true, false}, {"0.0.0.0:0", false, true}} {
		ln, err := listenLogic(c.addr, c.tls, c.allow)
		if err != nil {
			t.Fatalf("%+v: %v", c, err)
		}
		ln.Close()
	}
	stop := make(chan os.Signal)
	if code := logicMain([]string{"--listen", "0.0.0.0:0", "--data", t.TempDir(), "--nats", "", "--metrics", "", "--log-level", "error"}, stop, nil); code == 0 {
		t.Fatal("longlink logic served plaintext on every interface")
	}
}

// TestGatewayRefusesPlaintextRemoteBackend: a grpc:// backend off this host
// needs TLS or an explicit opt-in.
func TestGatewayRefusesPlaintextRemoteBackend(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	bf := addBackendFlags(fs)
	dir := t.TempDir()
	_, err := openGatewayBackend(testutil.Quiet(), backendSetup{spec: "grpc://10.1.2.3:7200", dataDir: dir, flags: bf})
	if err == nil || !strings.Contains(err.Error(), "TLS") {
		t.Fatalf("plaintext to another host: %v", err)
	}
	_ = fs.Parse([]string{"--backend-allow-plaintext"})
	gb, err := openGatewayBackend(testutil.Quiet(), backendSetup{spec: "grpc://10.1.2.3:7200", dataDir: dir, flags: bf, worker: true})
	if err != nil {
		t.Fatal(err)
	}
	gb.close()
}

// TestLogicExportImport: `longlink logic export` of a bbolt store piped
// into `longlink logic import --store nats://…` moves the data: a message
// sent before the move syncs from the replicated store; importing twice is
// refused; a store URL with a bad parameter is refused.
func TestLogicExportImport(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "logic.db")
	l, err := logic.Open(db, logic.Config{Logger: testutil.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	send, _ := proto.Marshal(&pb.SendRequest{To: 2, Text: "before the move"})
	if _, err := l.Call(timeout(t), &backend.Request{UID: 1, Method: logic.MethodSend, Body: send}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	var dump strings.Builder
	if code := logicExport([]string{"--db", db}, &dump); code != 0 {
		t.Fatalf("export exited %d", code)
	}
	ns, err := push.StartEmbedded(push.EmbeddedConfig{Listen: "127.0.0.1:0", JetStreamDir: filepath.Join(dir, "js")})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	url := ns.ClientURL() + "?replicas=1"
	if code := logicImport([]string{"--data", dir, "--store", url}, strings.NewReader(dump.String())); code != 0 {
		t.Fatalf("import exited %d", code)
	}
	if code := logicImport([]string{"--data", dir, "--store", url}, strings.NewReader(dump.String())); code == 0 {
		t.Fatal("a second import into the same store succeeded")
	}
	if code := logicImport([]string{"--data", dir, "--store", ns.ClientURL() + "?replica=1"}, strings.NewReader(dump.String())); code == 0 {
		t.Fatal("a store URL with an unknown parameter was accepted")
	}
	st, err := logic.OpenStore(url, logic.StoreOptions{Logger: testutil.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	m, err := logic.New(st, logic.Config{Logger: testutil.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	checkSyncsOne(t, m, 2, "before the move", "after the move")
}

// checkSyncsOne syncs uid through b: it must get exactly one message, text.
func checkSyncsOne(t *testing.T, b interface {
	Call(context.Context, *backend.Request) ([]byte, error)
}, uid uint64, text, what string) {
	t.Helper()
	sync, _ := proto.Marshal(&pb.SyncRequest{})
	out, err := b.Call(timeout(t), &backend.Request{UID: uid, Method: logic.MethodSync, Body: sync})
	if err != nil {
		t.Fatal(err)
	}
	var rep pb.SyncReply
	if err := proto.Unmarshal(out, &rep); err != nil || len(rep.Items) != 1 || rep.Items[0].GetMessage().GetText() != text {
		t.Fatalf("%s: %v %v", what, &rep, err)
	}
}

// startLogicCmd runs `longlink logic` with args until the test ends and
// returns its gRPC address; at the end it must stop on SIGTERM with exit 0.
func startLogicCmd(t *testing.T, args ...string) string {
	t.Helper()
	stop := make(chan os.Signal, 1)
	addrc := make(chan string, 1)
	done := make(chan int, 1)
	go func() {
		done <- logicMain(append([]string{"--listen", "127.0.0.1:0", "--nats", "", "--metrics", "", "--log-level", "error"}, args...), stop, func(a string) { addrc <- a })
	}()
	t.Cleanup(func() {
		stop <- syscall.SIGTERM
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("logic exited %d on SIGTERM", code)
			}
		case <-time.After(15 * time.Second):
			t.Error("logic did not stop")
		}
	})
	select {
	case a := <-addrc:
		return a
	case code := <-done:
		t.Fatalf("logic exited %d", code)
	case <-time.After(15 * time.Second):
		t.Fatal("logic did not start")
	}
	return ""
}

// TestLogicCommandsShareAReplicatedStore is the issue-15 scenario: two
// `longlink logic --store nats://…` instances; alice's send through one,
// bob's sync through the other finds it. The same two on bbolt files are
// refused by the gateway's pool.
func TestLogicCommandsShareAReplicatedStore(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "logic.secret")
	ns, err := push.StartEmbedded(push.EmbeddedConfig{Listen: "127.0.0.1:0", JetStreamDir: filepath.Join(dir, "js")})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	store := ns.ClientURL() + "?replicas=1"
	a := startLogicCmd(t, "--data", filepath.Join(dir, "a"), "--secret", secret, "--store", store)
	b := startLogicCmd(t, "--data", filepath.Join(dir, "b"), "--secret", secret, "--store", store)
	key, _, err := remote.LoadOrCreateSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	pool := func(addrs ...string) *remote.Client {
		c, err := remote.NewClient(remote.Config{Addrs: addrs, Auth: remote.ClientAuth{Secret: key}, Logger: testutil.Quiet()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	ca, cb := pool(a), pool(b)
	send, _ := proto.Marshal(&pb.SendRequest{To: 2, Text: "through a", ClientMsgId: "x1"})
	if _, err := ca.Call(timeout(t), &backend.Request{UID: 1, Method: logic.MethodSend, Body: send}); err != nil {
		t.Fatal(err)
	}
	checkSyncsOne(t, cb, 2, "through a", "bob's sync through the other instance")
	both := pool(a, b)
	for _, r := range both.Probe(timeout(t)) {
		if r.Err != nil {
			t.Fatalf("%s: %v", r.Addr, r.Err)
		}
	}

	// Two bbolt-backed instances behind one pool: refused, loudly.
	x := startLogicCmd(t, "--data", filepath.Join(dir, "x"), "--secret", secret)
	y := startLogicCmd(t, "--data", filepath.Join(dir, "y"), "--secret", secret)
	bad := pool(x, y)
	if _, err := bad.Call(timeout(t), &backend.Request{UID: 1, Method: logic.MethodSend, Body: send}); err == nil || !strings.Contains(err.Error(), "different stores") {
		t.Fatalf("two bbolt instances behind one pool: %v", err)
	}
}

// writePKI writes a CA, a server certificate for 127.0.0.1 and a client
// certificate, all PEM, into dir.
func writePKI(t *testing.T, dir string) (ca, srvCert, srvKey, cliCert, cliKey string) {
	t.Helper()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tm := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name}, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tm, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kd, _ := x509.MarshalECPrivateKey(k)
		return write(name+".pem", "CERTIFICATE", der), write(name+".key", "EC PRIVATE KEY", kd)
	}
	srvCert, srvKey = leaf("logic", 2, x509.ExtKeyUsageServerAuth)
	cliCert, cliKey = leaf("gateway", 3, x509.ExtKeyUsageClientAuth)
	return write("ca.pem", "CERTIFICATE", caDER), srvCert, srvKey, cliCert, cliKey
}

// TestLogicCommandMutualTLS: `longlink logic --tls-*` and a gateway's
// --backend-tls-* flags talk; a gateway without a client certificate, or
// in plaintext, does not.
func TestLogicCommandMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, srvCert, srvKey, cliCert, cliKey := writePKI(t, dir)
	addr := startLogicCmd(t, "--data", dir, "--tls-cert", srvCert, "--tls-key", srvKey, "--tls-ca", ca)
	call := func(args ...string) error {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		bf := addBackendFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		gb, err := openGatewayBackend(testutil.Quiet(), backendSetup{spec: "grpc://" + addr, dataDir: dir, flags: bf, worker: true})
		if err != nil {
			t.Fatal(err)
		}
		defer gb.close()
		sync, _ := proto.Marshal(&pb.SyncRequest{})
		_, err = gb.be.Call(timeout(t), &backend.Request{UID: 7, Device: "d", Method: logic.MethodSync, Body: sync})
		return err
	}
	if err := call("--backend-tls-ca", ca, "--backend-tls-cert", cliCert, "--backend-tls-key", cliKey); err != nil {
		t.Fatalf("mutual TLS: %v", err)
	}
	if err := call("--backend-tls-ca", ca); err == nil {
		t.Fatal("a gateway without a client certificate was served")
	}
	if err := call(); err == nil {
		t.Fatal("a plaintext gateway was served by a TLS logic")
	}
}
