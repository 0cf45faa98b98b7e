package gateway

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/codec"
)

func startHTTP(t *testing.T, mod func(*Config), hc HTTPConfig) (*Server, string) {
	t.Helper()
	be := backend.NewEmbedded()
	be.Handle("refuse", func(context.Context, *backend.Request) ([]byte, error) {
		return nil, backend.Logical(1500, "not allowed")
	})
	be.Handle("broken", func(context.Context, *backend.Request) ([]byte, error) { return nil, errors.New("db down") })
	be.Handle("whoami", func(_ context.Context, r *backend.Request) ([]byte, error) {
		return []byte(r.Device), nil
	})
	s := startServer(t, func(c *Config) {
		c.Backend = be
		if mod != nil {
			mod(c)
		}
	})
	if hc.Addr == "" {
		hc.Addr = "127.0.0.1:0"
	}
	addr, err := s.ServeHTTP(hc, false)
	if err != nil {
		t.Fatal(err)
	}
	return s, addr
}

func post(t *testing.T, client *http.Client, url, tok string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	req.Header.Set("X-Longlink-Device", "curl")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestHTTPCalls(t *testing.T) {
	s, addr := startHTTP(t, nil, HTTPConfig{})
	good := dialWire(t, s.Addr())
	good.auth(token(t, 1, "", time.Hour), "tcp")
	base := "http://" + addr + "/v1/call/"
	tok := token(t, 42, "", time.Hour)
	c := http.DefaultClient

	resp, body := post(t, c, base+"echo", tok, []byte("short connection"))
	if resp.StatusCode != 200 || string(body) != "short connection" {
		t.Fatalf("echo: %v %q", resp.Status, body)
	}
	if _, body = post(t, c, base+"whoami", tok, nil); string(body) != "curl" {
		t.Fatalf("device not passed: %q", body)
	}
	for _, tc := range []struct {
		method, tok string
		body        []byte
		status      int
		code        codec.Code
		retryAfter  bool
	}{
		{"echo", "", nil, 401, codec.CodeBadToken, false},
		{"echo", "forged", nil, 401, codec.CodeBadToken, false},
		{"echo", token(t, 42, "", -time.Minute), nil, 401, codec.CodeTokenExpired, false},
		{"nope", tok, nil, 404, codec.CodeUnknownMethod, false},
		{"refuse", tok, nil, 422, 1500, false},
		{"broken", tok, nil, 503, codec.CodeSystem, true},
		{"echo", tok, make([]byte, codec.DefaultMaxBody+1), 413, codec.CodeBodyTooLarge, false},
	} {
		resp, body := post(t, c, base+tc.method, tc.tok, tc.body)
		var e httpError
		_ = json.Unmarshal(body, &e)
		if resp.StatusCode != tc.status || e.Code != tc.code {
			t.Errorf("%s: got %v code %d (%s), want %d code %d", tc.method, resp.Status, e.Code, e.Message, tc.status, tc.code)
		}
		if (resp.Header.Get("Retry-After") != "") != tc.retryAfter {
			t.Errorf("%s: Retry-After %q", tc.method, resp.Header.Get("Retry-After"))
		}
	}
	if resp, err := http.Get(base + "echo"); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %v %v", err, resp.Status)
	}
	good.send(codec.AppendFrame(nil, codec.CmdHeartbeat, 0, 1, nil))
	good.expect(codec.CmdPong, time.Second)
}

func TestHTTPBusyWhenQueueFull(t *testing.T) {
	block := make(chan struct{})
	s, addr := startHTTP(t, func(c *Config) { c.PoolSize = 1; c.QueueSize = 1; c.CallTimeout = 300 * time.Millisecond }, HTTPConfig{})
	s.cfg.Backend.(*backend.Embedded).Handle("block", func(ctx context.Context, _ *backend.Request) ([]byte, error) {
		select {
		case <-block:
		case <-ctx.Done():
		}
		return nil, nil
	})
	defer close(block)
	tok := token(t, 1, "", time.Hour)
	for i := 0; i < 3; i++ { // keep the one goroutine and the one queue slot taken
		go func() {
			for {
				select {
				case <-block:
					return
				default:
				}
				req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/call/block", nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				if resp, err := http.DefaultClient.Do(req); err == nil {
					resp.Body.Close()
				}
			}
		}()
	}
	checkFor(t, 3*time.Second, func() error {
		resp, body := post(t, http.DefaultClient, "http://"+addr+"/v1/call/echo", tok, nil)
		if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
			return errors.New("not busy yet: " + resp.Status + " " + string(body))
		}
		return nil
	})
}

func TestHTTPSlowClientCut(t *testing.T) {
	_, addr := startHTTP(t, nil, HTTPConfig{ReadHeaderTimeout: 200 * time.Millisecond})
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_, _ = nc.Write([]byte("POST /v1/call/echo HTTP/1.1\r\nHost: x\r\n")) // and never finish the headers
	_ = nc.SetReadDeadline(time.Now().Add(3 * time.Second))
	start := time.Now()
	_, _ = io.ReadAll(nc)
	if time.Since(start) > 2*time.Second {
		t.Fatal("slow header client not cut")
	}
}

func TestHTTP2WithTLS(t *testing.T) {
	dir := t.TempDir()
	cert, key := selfSigned(t, dir)
	_, addr := startHTTP(t, nil, HTTPConfig{TLSCert: cert, TLSKey: key})
	pool := x509.NewCertPool()
	pem, _ := os.ReadFile(cert)
	pool.AppendCertsFromPEM(pem)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	resp, body := post(t, c, "https://"+addr+"/v1/call/echo", token(t, 1, "", time.Hour), []byte("h2"))
	if resp.StatusCode != 200 || string(body) != "h2" || resp.ProtoMajor != 2 {
		t.Fatalf("%v %s %q", resp.Status, resp.Proto, body)
	}
}

func selfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(k)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	_ = os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	_ = os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certFile, keyFile
}

// The HTTP port serves the browser example (web.Files in the binary): the
// page at /example/, its module beside it, / redirecting there, nothing else.
func TestHTTPServesExample(t *testing.T) {
	files := fstest.MapFS{"example.html": {Data: []byte("<h1>example</h1>")}, "longlink.js": {Data: []byte("export {}")}}
	_, base := startHTTP(t, nil, HTTPConfig{Addr: "127.0.0.1:0", Example: files})
	cl := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(path string) (*http.Response, string) {
		resp, err := cl.Get("http://" + base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	if r, body := get("/example/"); r.StatusCode != 200 || body != "<h1>example</h1>" {
		t.Errorf("/example/: %d %q", r.StatusCode, body)
	}
	if r, body := get("/example/longlink.js"); r.StatusCode != 200 || body != "export {}" || !strings.Contains(r.Header.Get("Content-Type"), "javascript") {
		t.Errorf("/example/longlink.js: %d %q %q", r.StatusCode, r.Header.Get("Content-Type"), body)
	}
	if r, _ := get("/"); r.StatusCode != http.StatusFound || r.Header.Get("Location") != "/example/" {
		t.Errorf("/: %d to %q", r.StatusCode, r.Header.Get("Location"))
	}
	if r, _ := get("/example/../keys.json"); r.StatusCode == 200 {
		t.Error("path escape served something")
	}
	if r, _ := get("/other"); r.StatusCode != http.StatusNotFound {
		t.Errorf("/other: %d", r.StatusCode)
	}
}
