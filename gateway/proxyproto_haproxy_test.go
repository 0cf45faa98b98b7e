package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/codec"
	"github.com/longlink/longlink/internal/testutil"
	"github.com/longlink/longlink/proto/pb"
)

// haproxyBin finds the haproxy binary: the test is skipped without it,
// except under CI (CI=true), where it fails.
func haproxyBin(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/sbin/haproxy", "haproxy"} {
		if bin, err := exec.LookPath(p); err == nil {
			return bin
		}
	}
	skipOutsideCI(t, "haproxy is not installed (Debian package haproxy)")
	return ""
}

// freePort returns a 127.0.0.1 port nothing listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// selfSignedPEM writes a certificate and key for 127.0.0.1 in one PEM file
// (haproxy's crt format) and returns its path and a pool trusting it.
func selfSignedPEM(t *testing.T, dir string) (string, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "longlink test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	_ = pem.Encode(&b, &pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	path := filepath.Join(dir, "gateway.pem")
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return path, pool
}

// The haproxy configuration docs/operations.md documents: plain TCP and
// TLS-terminated WebSocket (wss), both to the gateway with PROXY v2.
const haproxyConfig = `global
    maxconn 1000
defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
frontend longlink_tcp
    bind 127.0.0.1:%d
    default_backend longlink
frontend longlink_wss
    bind 127.0.0.1:%d ssl crt %s alpn http/1.1
    default_backend longlink
backend longlink
    server gw1 %s send-proxy-v2 check inter 100ms
`

// startHAProxy runs haproxy in front of the gateway at gw and returns the
// TCP and wss frontend addresses; it is killed when the test ends.
func startHAProxy(t *testing.T, gw string) (tcpAddr, wssAddr string, roots *x509.CertPool) {
	t.Helper()
	bin := haproxyBin(t)
	dir := t.TempDir()
	pemPath, roots := selfSignedPEM(t, dir)
	tcpPort, wssPort := freePort(t), freePort(t)
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, haproxyConfig, tcpPort, wssPort, pemPath, gw), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command(bin, "-db", "-f", cfg) // -db: foreground, no daemon
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			t.Errorf("haproxy did not exit after kill")
		}
	})
	tcpAddr, wssAddr = fmt.Sprintf("127.0.0.1:%d", tcpPort), fmt.Sprintf("127.0.0.1:%d", wssPort)
	deadline := time.Now().Add(5 * time.Second)
	for _, a := range []string{tcpAddr, wssAddr} {
		for {
			select {
			case err := <-exited:
				t.Fatalf("haproxy exited: %v\n%s", err, out.String())
			default:
			}
			c, err := net.DialTimeout("tcp", a, 200*time.Millisecond)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("haproxy not listening on %s: %v\n%s", a, err, out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return tcpAddr, wssAddr, roots
}

// TestHAProxyInFront runs a real haproxy with send-proxy-v2 in front of a
// gateway that trusts 127.0.0.0/8: a client over TCP and a browser-style
// client over wss (TLS ended by haproxy) authenticate and call, and the
// gateway sees each client's own address and source port, not haproxy's.
func TestHAProxyInFront(t *testing.T) {
	logs := &testutil.SyncBuffer{}
	s := startServer(t, func(c *Config) {
		c.ProxyProtocolFrom = loopbackNets
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	tcpAddr, wssAddr, roots := startHAProxy(t, s.Addr())
	// haproxy's health checks (check inter 100ms) send v2 LOCAL headers:
	// accepted, not logged as bad.
	t.Cleanup(func() {
		if strings.Contains(logs.String(), "PROXY") {
			t.Errorf("PROXY trouble in the gateway's log:\n%s", logs.String())
		}
	})

	// The socket address the gateway sees for uid (haproxy's side).
	sock := func(uid uint64) (a netip.AddrPort) {
		s.sessions.each(uid, "", func(c *conn) { a = sockAddr(c.gc) })
		return a
	}

	t.Run("tcp", func(t *testing.T) {
		w := dialWire(t, tcpAddr)
		w.auth(token(t, 8001, "phone", time.Hour), "phone")
		if r := w.call(1, "echo", []byte("via haproxy")); string(r.Body) != "via haproxy" {
			t.Fatalf("echo = %q", r.Body)
		}
		want := netip.MustParseAddrPort(w.c.LocalAddr().String())
		if got := sessionPeer(t, s, 8001); got != want {
			t.Fatalf("gateway sees %v, want the client's %v", got, want)
		}
		if sock(8001) == want {
			t.Fatalf("socket peer %v is the client itself: haproxy was not in the path", want)
		}
	})

	t.Run("wss", func(t *testing.T) {
		var local net.Addr
		d := ws.Dialer{
			TLSConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
			NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
				nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
				if err == nil {
					local = nc.LocalAddr()
				}
				return nc, err
			},
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		nc, br, _, err := d.Dial(ctx, "wss://"+wssAddr+"/ws")
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		if _, ok := nc.(*tls.Conn); !ok {
			t.Fatalf("not TLS: %T", nc)
		}
		if br == nil {
			br = bufio.NewReader(nc)
		}
		wc := &wsClient{t: t, nc: nc, br: br}
		wc.sendFrame(codec.CmdAuth, 0, &pb.Auth{Token: token(t, 8002, "web", time.Hour), Device: "web"})
		wc.expect(codec.CmdAuthOK)
		wc.sendFrame(codec.CmdRequest, 3, &pb.Request{Method: "echo", Body: []byte("over wss")})
		f := wc.expect(codec.CmdResponse)
		var r pb.Response
		if err := proto.Unmarshal(f.Body, &r); err != nil || string(r.Body) != "over wss" || f.Seq != 3 {
			t.Fatalf("echo over wss: seq %d %q %v", f.Seq, r.Body, err)
		}
		want := netip.MustParseAddrPort(local.String())
		if got := sessionPeer(t, s, 8002); got != want {
			t.Fatalf("gateway sees %v, want the browser's %v", got, want)
		}
		if sock(8002) == want {
			t.Fatalf("socket peer %v is the client itself: haproxy was not in the path", want)
		}
	})
	time.Sleep(300 * time.Millisecond) // a few health checks
}
