package push_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/push"
)

// selfSigned writes a certificate for 127.0.0.1 (its own CA) and its key.
func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "longlink test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(k)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestClientAuthTLS: a non-loopback NATS without TLS is refused before any
// byte is sent; --nats-tls-ca verifies a TLS server and connects.
func TestClientAuthTLS(t *testing.T) {
	_, err := nats.Connect("nats://192.0.2.1:4222", push.ClientAuth{}.As(push.RoleGateway))
	if err == nil || !strings.Contains(err.Error(), "192.0.2.1") || !strings.Contains(err.Error(), "TLS") {
		t.Fatalf("plaintext off loopback: %v", err)
	}
	cert, key := selfSigned(t)
	c, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true,
		TLS: true, TLSConfig: &tls.Config{Certificates: []tls.Certificate{c}, MinVersion: tls.VersionTLS12},
		Username: "u", Password: "p"})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(5 * time.Second) {
		t.Fatal("TLS server did not start")
	}
	url := strings.Replace(ns.ClientURL(), "nats://", "tls://", 1)
	if nc, err := nats.Connect(url, push.ClientAuth{User: "u", Password: "p"}.As(push.RolePusher), nats.Timeout(3*time.Second)); err == nil {
		nc.Close()
		t.Fatal("connected to a TLS server whose certificate nobody verified")
	}
	nc, err := nats.Connect(url, push.ClientAuth{User: "u", Password: "p", TLSCA: cert}.As(push.RolePusher), nats.Timeout(3*time.Second))
	if err != nil {
		t.Fatalf("with --nats-tls-ca: %v", err)
	}
	defer nc.Close()
	if _, err := nats.Connect(url, push.ClientAuth{TLSCA: filepath.Join(t.TempDir(), "missing.pem")}.As(push.RolePusher)); err == nil || !strings.Contains(err.Error(), "--nats-tls-ca") {
		t.Fatalf("missing CA file: %v", err)
	}
}

// TestPushServiceTLS: PushService with a certificate serves TLS callers
// with the token.
func TestPushServiceTLS(t *testing.T) {
	cert, key := selfSigned(t)
	h, err := push.StartHub(push.HubConfig{NATSListen: "127.0.0.1:0", GRPCListen: "127.0.0.1:0", PushTokens: []string{"tok"},
		GRPCTLSCert: cert, GRPCTLSKey: key, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	tc, err := credentials.NewClientTLSFromFile(cert, "")
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(h.GRPCAddr(), grpc.WithTransportCredentials(tc), grpc.WithPerRPCCredentials(push.BearerToken("tok")))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := pb.NewPushServiceClient(cc).Notify(ctx, &pb.NotifyRequest{Uid: 1, Type: 1, Version: 1}); err != nil {
		t.Fatal(err)
	}
}
