package offline

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/longlink/longlink/offline/apns"
	"github.com/longlink/longlink/offline/provider"
	"github.com/longlink/longlink/offline/standin"
	"github.com/longlink/longlink/push"
)

// TestMain lets the test binary be a sender process (TestSenderKill9).
func TestMain(m *testing.M) {
	if os.Getenv("LL_OFFLINE_CHILD") == "1" {
		runChildSender()
		return
	}
	os.Exit(m.Run())
}

func runChildSender() {
	sec, _ := hex.DecodeString(os.Getenv("LL_SECRET"))
	nc, err := push.Connect(os.Getenv("LL_NATS"), "child-sender", quiet, push.ClientAuth{Secret: sec}.As(push.RoleOffline))
	if err != nil {
		os.Exit(3)
	}
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	devs, err := OpenDevices(ctx, js, 1, quiet)
	if err != nil {
		os.Exit(4)
	}
	keyPEM, _ := os.ReadFile(os.Getenv("LL_KEY"))
	key, err := apns.ParseKey(keyPEM)
	if err != nil {
		os.Exit(5)
	}
	certPEM, _ := os.ReadFile(os.Getenv("LL_CERT"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig.RootCAs = pool
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetHTTP2(true)
	c, err := apns.New(apns.Config{Key: key, KeyID: "KEYID00001", TeamID: "TEAM000001", Topic: "com.example.app",
		Endpoint: os.Getenv("LL_APNS"), HTTPClient: &http.Client{Transport: tr, Timeout: 5 * time.Second}})
	if err != nil {
		os.Exit(6)
	}
	none := func(context.Context, uint64) ([]string, error) { return nil, nil }
	if _, err := NewSender(ctx, SenderConfig{JS: js, Devices: devs, Presence: none, Clients: []provider.Client{c},
		Delay: 10 * time.Millisecond, Budget: time.Minute, Concurrency: 8, AckWait: 2 * time.Second, Logger: quiet}); err != nil {
		os.Exit(7)
	}
	select {} // until killed
}

// TestSenderKill9: a sender process is killed with SIGKILL in the middle
// of a batch; a second one takes over. No device gets a notify twice (at
// most once: acknowledged before sent), and everything not taken by the
// dead sender is delivered; at most Concurrency (8) of the dead sender's
// in-flight notifies are lost.
func TestSenderKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("starts sender processes")
	}
	dir := t.TempDir()
	ne := startNATS(t, dir)
	js := ne.js(t, push.RoleOffline)
	ctx := ctxT(t, 60*time.Second)
	devs, err := OpenDevices(ctx, js, 1, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer devs.Close()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	keyFile, certFile := filepath.Join(dir, "key.p8"), filepath.Join(dir, "ca.pem")
	_ = os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	srv := standin.APNs(&k.PublicKey, "KEYID00001", "TEAM000001", "com.example.app")
	defer srv.Close()
	_ = os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600)
	srv.SetFault(func(string, int) standin.Fault { return standin.Fault{Sleep: 20 * time.Millisecond} })

	const users = 300
	w := NewWriter(ne.conn(t, push.RoleGateway))
	for u := uint64(1); u <= users; u++ {
		r := Registration{Platform: "apns", Token: apnsToken(u, 1), Expires: time.Now().Add(time.Hour).Unix()}
		if err := w.Put(ctx, u, "phone", r); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "registrations", func() bool { return devs.Len() == users })
	if _, err := EnsureStream(ctx, js, 1, time.Minute); err != nil {
		t.Fatal(err)
	}
	enq := NewEnqueuer(EnqueuerConfig{JS: js, Devices: devs, Budget: time.Minute, Logger: quiet})
	for u := uint64(1); u <= users; u++ {
		enq.Notified(u, "", 1, 1, nil, false)
	}
	enq.Close()

	child := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "LL_OFFLINE_CHILD=1", "LL_NATS="+ne.url, "LL_SECRET="+hex.EncodeToString(ne.sec),
			"LL_APNS="+srv.URL, "LL_KEY="+keyFile, "LL_CERT="+certFile)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	first := child()
	waitFor(t, 30*time.Second, "the first sender to be mid-batch", func() bool { return len(srv.Requests()) >= users/3 })
	_ = first.Process.Signal(syscall.SIGKILL)
	_ = first.Wait()
	atKill := len(srv.Requests())
	second := child()
	defer func() { _ = second.Process.Kill(); _ = second.Wait() }()
	cons, err := js.Consumer(ctx, push.OfflineStream, push.OfflineDurable)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 40*time.Second, "the queue to drain", func() bool {
		ci, err := cons.Info(ctx)
		return err == nil && ci.NumPending == 0 && ci.NumAckPending == 0
	})
	time.Sleep(300 * time.Millisecond)
	seen := map[string]int{}
	for _, r := range srv.Requests() {
		seen[r.Token]++
	}
	for tok, n := range seen {
		if n > 1 {
			t.Errorf("token %s notified %d times", tok, n)
		}
	}
	lost := users - len(seen)
	t.Logf("%d requests when killed; %d devices notified in all, %d lost with the killed sender", atKill, len(seen), lost)
	if lost > 8 {
		t.Errorf("%d lost: more than the killed sender's concurrency", lost)
	}
}
