package remote

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/internal/testutil"
	"github.com/longlink/longlink/proto/pb"
)

// serveAuthed serves an echo backend behind a and returns its address.
func serveAuthed(t *testing.T, a ServerAuth) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts, err := ServerOptions(a)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(opts...)
	NewServer(backend.NewEmbedded(), 0).Register(gs)
	RegisterHealth(gs)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	return ln.Addr().String()
}

func ctx3s(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// rawLogic is a LogicService client with whatever dial options a test
// chooses: an attacker's, not the gateway's.
func rawLogic(t *testing.T, addr string, opts ...grpc.DialOption) (pb.LogicServiceClient, *grpc.ClientConn) {
	t.Helper()
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return pb.NewLogicServiceClient(cc), cc
}

func TestServerRefusesCallersWithoutTheSecret(t *testing.T) {
	var audit testutil.SyncBuffer
	addr := serveAuthed(t, ServerAuth{Secret: testSecret, Logger: slog.New(slog.NewTextHandler(&audit, nil))})
	cli, cc := rawLogic(t, addr)
	call := &pb.CallRequest{Uid: 42, Method: "echo", Body: []byte("as user 42")}
	if _, err := cli.Call(ctx3s(t), call); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("call without credentials: got %v, want Unauthenticated", err)
	}
	if _, err := cli.Ping(ctx3s(t), &pb.PingRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("ping without credentials: got %v, want Unauthenticated", err)
	}
	if _, err := cli.Presence(ctx3s(t), &pb.PresenceEvent{Uid: 42, Online: true}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("presence without credentials: got %v, want Unauthenticated", err)
	}
	if a := audit.String(); strings.Count(a, "audit: logic call refused") != 1 || !strings.Contains(a, "/longlink.v1.LogicService/Call") {
		t.Fatalf("want one audit line naming the method (later ones are rate-limited), got:\n%s", a)
	}
	wrong, _ := rawLogic(t, addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(bearer(testSecret+"x")))
	if _, err := wrong.Call(ctx3s(t), call); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("call with a wrong secret: got %v, want Unauthenticated", err)
	}
	// Health checks need no credentials, and say SERVING.
	h, err := healthpb.NewHealthClient(cc).Check(ctx3s(t), &healthpb.HealthCheckRequest{Service: pb.LogicService_ServiceDesc.ServiceName})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", h, err)
	}
	// The gateway's pool, with the secret, is served.
	c, err := NewClient(Config{Addrs: []string{addr}, Auth: ClientAuth{Secret: testSecret}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, err := c.Call(ctx3s(t), &backend.Request{UID: 42, Method: "echo", Body: []byte("hi")})
	if err != nil || string(b) != "hi" {
		t.Fatalf("authenticated call: %q %v", b, err)
	}
	for _, r := range c.Probe(ctx3s(t)) {
		if r.Err != nil {
			t.Fatalf("probe %s: %v", r.Addr, r.Err)
		}
	}
}

func TestProbeNamesWhatFailed(t *testing.T) {
	addr := serveAuthed(t, ServerAuth{Secret: testSecret})
	dead := func() string { // a port nobody listens on
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		defer ln.Close()
		return ln.Addr().String()
	}()
	c, err := NewClient(Config{Addrs: []string{addr, dead}, Auth: ClientAuth{Secret: "another-secret-0123456789"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rs := c.Probe(ctx3s(t))
	if rs[0].Addr != addr || rs[0].Err == nil || !strings.Contains(rs[0].Err.Error(), "credentials") {
		t.Fatalf("wrong secret: %+v", rs[0])
	}
	if rs[1].Addr != dead || rs[1].Err == nil || !strings.Contains(rs[1].Err.Error(), "Unavailable") {
		t.Fatalf("dead instance: %+v", rs[1])
	}
}

func TestServerOptionsNeedASecret(t *testing.T) {
	if _, err := ServerOptions(ServerAuth{}); err == nil {
		t.Fatal("a server without a secret was allowed")
	}
	if _, err := NewClient(Config{Addrs: []string{"127.0.0.1:1"}}); err == nil {
		t.Fatal("a client without a secret was allowed")
	}
}

func TestClientRefusesPlaintextOffHost(t *testing.T) {
	for _, addr := range []string{"10.0.0.7:7200", "logic.internal:7200", "[2001:db8::1]:7200", "0.0.0.0:7200"} {
		_, err := NewClient(Config{Addrs: []string{addr}, Auth: ClientAuth{Secret: testSecret}})
		if err == nil || !strings.Contains(err.Error(), "TLS") {
			t.Fatalf("%s without TLS: got %v, want a refusal naming TLS", addr, err)
		}
		c, err := NewClient(Config{Addrs: []string{addr}, Auth: ClientAuth{Secret: testSecret, AllowPlaintext: true}})
		if err != nil {
			t.Fatalf("%s with AllowPlaintext: %v", addr, err)
		}
		c.Close()
	}
	for _, addr := range []string{"127.0.0.1:7200", "localhost:7200", "[::1]:7200", "unix:/tmp/x.sock"} {
		if !IsLocal(addr) {
			t.Fatalf("%s is on this host", addr)
		}
	}
}

func TestSecretFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", SecretFile)
	s, created, err := LoadOrCreateSecret(path)
	if err != nil || !created || len(s) != 64 {
		t.Fatalf("create: %q %v %v", s, created, err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	s2, created, err := LoadOrCreateSecret(path)
	if err != nil || created || s2 != s {
		t.Fatalf("reload: %q %v %v", s2, created, err)
	}
	_ = os.Chmod(path, 0o644)
	if _, _, err := LoadOrCreateSecret(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("a world-readable secret was accepted: %v", err)
	}
	short := filepath.Join(dir, "short")
	_ = os.WriteFile(short, []byte("abc\n"), 0o600)
	if _, err := LoadSecret(short); err == nil {
		t.Fatal("a 3-character secret was accepted")
	}
}

// pki writes a CA and two certificates it signs (server for 127.0.0.1,
// client), and a second CA that signs nothing here.
type pki struct{ ca, otherCA, srvCert, srvKey, cliCert, cliKey string }

func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	serial := int64(1)
	tmpl := func(cn string) *x509.Certificate {
		serial++
		return &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	}
	mkCA := func(name string) (*x509.Certificate, *ecdsa.PrivateKey, string) {
		k := newKey()
		c := tmpl(name)
		c.IsCA, c.BasicConstraintsValid, c.KeyUsage = true, true, x509.KeyUsageCertSign
		der, err := x509.CreateCertificate(rand.Reader, c, c, &k.PublicKey, k)
		if err != nil {
			t.Fatal(err)
		}
		parsed, _ := x509.ParseCertificate(der)
		return parsed, k, write(name+".pem", "CERTIFICATE", der)
	}
	ca, caKey, caPath := mkCA("ca")
	_, _, otherPath := mkCA("other")
	leaf := func(name string, usage x509.ExtKeyUsage) (string, string) {
		k := newKey()
		c := tmpl(name)
		c.ExtKeyUsage = []x509.ExtKeyUsage{usage}
		c.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		der, err := x509.CreateCertificate(rand.Reader, c, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kd, _ := x509.MarshalECPrivateKey(k)
		return write(name+".pem", "CERTIFICATE", der), write(name+".key", "EC PRIVATE KEY", kd)
	}
	p := pki{ca: caPath, otherCA: otherPath}
	p.srvCert, p.srvKey = leaf("server", x509.ExtKeyUsageServerAuth)
	p.cliCert, p.cliKey = leaf("client", x509.ExtKeyUsageClientAuth)
	return p
}

func TestMutualTLS(t *testing.T) {
	p := newPKI(t)
	stls, err := ServerTLS(TLSFiles{Cert: p.srvCert, Key: p.srvKey, CA: p.ca})
	if err != nil {
		t.Fatal(err)
	}
	addr := serveAuthed(t, ServerAuth{Secret: testSecret, TLS: stls})
	try := func(f *TLSFiles) error {
		a := ClientAuth{Secret: testSecret}
		if f != nil {
			if a.TLS, err = ClientTLS(*f); err != nil {
				t.Fatal(err)
			}
		}
		c, err := NewClient(Config{Addrs: []string{addr}, Auth: a})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = c.Call(ctx3s(t), &backend.Request{UID: 1, Method: "echo", Body: []byte("x")})
		return err
	}
	if err := try(&TLSFiles{CA: p.ca, Cert: p.cliCert, Key: p.cliKey}); err != nil {
		t.Fatalf("mutual TLS with the secret: %v", err)
	}
	if err := try(&TLSFiles{CA: p.ca}); err == nil {
		t.Fatal("a client without a certificate was served")
	}
	if err := try(&TLSFiles{CA: p.otherCA, Cert: p.cliCert, Key: p.cliKey}); err == nil {
		t.Fatal("a client trusting another CA talked to the server")
	}
	if err := try(nil); err == nil {
		t.Fatal("a plaintext client was served by a TLS server")
	}
	// TLS does not replace the secret.
	cta, _ := ClientTLS(TLSFiles{CA: p.ca, Cert: p.cliCert, Key: p.cliKey})
	c, err := NewClient(Config{Addrs: []string{addr}, Auth: ClientAuth{Secret: "not-the-secret-0123456789", TLS: cta}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Call(ctx3s(t), &backend.Request{UID: 1, Method: "echo"}); status.Code(errorsUnwrap(err)) != codes.Unauthenticated {
		t.Fatalf("a certified client with a wrong secret: %v", err)
	}
	if _, err := ServerTLS(TLSFiles{CA: p.ca}); err == nil {
		t.Fatal("a TLS server without a certificate was allowed")
	}
	if _, err := ClientTLS(TLSFiles{Cert: p.cliCert}); err == nil {
		t.Fatal("a client certificate without its key was allowed")
	}
}

// errorsUnwrap finds the gRPC status under the pool's wrapping.
func errorsUnwrap(err error) error {
	for e := err; e != nil; {
		if _, ok := status.FromError(e); ok {
			return e
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			break
		}
		e = u.Unwrap()
	}
	return err
}

// TestSecretCreateRace: a logic and gateways starting together on one file
// agree on one secret, and none reads a half-written file.
func TestSecretCreateRace(t *testing.T) {
	for round := range 20 {
		path := filepath.Join(t.TempDir(), SecretFile)
		const n = 8
		var wg sync.WaitGroup
		got := make([]string, n)
		errs := make([]error, n)
		made := make([]bool, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got[i], made[i], errs[i] = LoadOrCreateSecret(path)
			}()
		}
		wg.Wait()
		creators := 0
		for i := range n {
			if errs[i] != nil || got[i] != got[0] {
				t.Fatalf("round %d: caller %d got %q, %v; caller 0 %q", round, i, got[i], errs[i], got[0])
			}
			if made[i] {
				creators++
			}
		}
		if creators != 1 {
			t.Fatalf("round %d: %d creators", round, creators)
		}
		if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
			t.Fatalf("round %d: temporary files left: %v", round, ents)
		}
	}
}
