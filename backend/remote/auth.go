package remote

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/longlink/longlink/proto/pb"
)

// Every LogicService call carries the shared logic secret as a bearer token
// ("authorization: Bearer <secret>"), checked by the server's interceptors
// in constant time: the logic believes the user id a call names, so only a
// gateway may call it. Across hosts the connection is TLS as well (mutual
// when a CA for client certificates is given), since the secret must not
// travel in clear.

// SecretFile is the default name of the shared secret in a data directory.
const SecretFile = "logic.secret"

// LoadOrCreateSecret reads the shared logic secret from path, creating a
// random one (0600, directory 0700) if the file does not exist, so a logic
// and a gateway pointed at the same file agree whichever starts first. A
// file readable by group or others is refused: the secret lets its holder
// act as any user.
func LoadOrCreateSecret(path string) (secret string, created bool, err error) {
	if s, err := LoadSecret(path); err == nil || !errors.Is(err, os.ErrNotExist) {
		return s, false, err
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", false, fmt.Errorf("logic secret %s: %w", path, err)
	}
	// Written whole under a temporary name, then linked into place: link
	// never replaces a file, so of a logic and a gateway racing here one
	// wins, and the other never reads a half-written secret.
	s := hex.EncodeToString(b)
	tmp, err := os.CreateTemp(filepath.Dir(path), ".logic-secret-*")
	if err != nil {
		return "", false, fmt.Errorf("logic secret %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(s + "\n")
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(tmp.Name(), path)
	}
	if errors.Is(err, os.ErrExist) { // the other side won the race
		s, err := LoadSecret(path)
		return s, false, err
	}
	if err != nil {
		return "", false, fmt.Errorf("logic secret %s: %w", path, err)
	}
	return s, true, nil
}

// LoadSecret reads an existing secret file, refusing one that group or
// others may read, or one shorter than 16 characters.
func LoadSecret(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("logic secret %s: %w", path, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("logic secret %s: mode %04o lets others read it; chmod 600 it", path, fi.Mode().Perm())
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("logic secret %s: %w", path, err)
	}
	s := strings.TrimSpace(string(raw))
	if len(s) < 16 {
		return "", fmt.Errorf("logic secret %s: %d characters; want at least 16", path, len(s))
	}
	return s, nil
}

// TLSFiles names PEM files for the gRPC link. Empty fields are unused.
type TLSFiles struct {
	Cert, Key string // this side's certificate and key
	CA        string // the CA that signs the other side's certificate
	// ServerName overrides the name a client checks the server's
	// certificate against (default: the host of the address).
	ServerName string
}

// Enabled reports whether any TLS file is set.
func (f TLSFiles) Enabled() bool { return f.Cert != "" || f.Key != "" || f.CA != "" }

func loadPair(f TLSFiles) ([]tls.Certificate, error) {
	if (f.Cert == "") != (f.Key == "") {
		return nil, errors.New("a TLS certificate needs its key and a key its certificate")
	}
	if f.Cert == "" {
		return nil, nil
	}
	c, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("TLS key pair %s, %s: %w", f.Cert, f.Key, err)
	}
	return []tls.Certificate{c}, nil
}

func loadPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("TLS CA: %w", err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("TLS CA %s: no PEM certificate in it", path)
	}
	return p, nil
}

// ServerTLS builds the server side: Cert and Key are required; with CA,
// clients must present a certificate it signed (mutual TLS).
func ServerTLS(f TLSFiles) (*tls.Config, error) {
	certs, err := loadPair(f)
	if err != nil {
		return nil, err
	}
	if certs == nil {
		return nil, errors.New("TLS on the logic listener needs --tls-cert and --tls-key")
	}
	c := &tls.Config{Certificates: certs, MinVersion: tls.VersionTLS13}
	if f.CA != "" {
		if c.ClientCAs, err = loadPool(f.CA); err != nil {
			return nil, err
		}
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return c, nil
}

// ClientTLS builds the client side: CA verifies the server (default: the
// system roots); Cert and Key are this gateway's client certificate.
func ClientTLS(f TLSFiles) (*tls.Config, error) {
	certs, err := loadPair(f)
	if err != nil {
		return nil, err
	}
	c := &tls.Config{Certificates: certs, MinVersion: tls.VersionTLS13, ServerName: f.ServerName}
	if f.CA != "" {
		if c.RootCAs, err = loadPool(f.CA); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// ServerAuth is how a LogicService server admits callers.
type ServerAuth struct {
	Secret string       // required: the shared logic secret
	TLS    *tls.Config  // optional: serve TLS (from ServerTLS)
	Logger *slog.Logger // optional: audit lines for refused callers (at most one per 10 s)
}

// healthPrefix is grpc.health.v1, answered without credentials so that
// balancers and probes can ask; it tells nothing but SERVING or not.
const healthPrefix = "/grpc.health.v1.Health/"

// ServerOptions returns the grpc.ServerOptions that enforce a: every call
// but health checks must carry the secret, or it is answered Unauthenticated.
func ServerOptions(a ServerAuth) ([]grpc.ServerOption, error) {
	if len(a.Secret) < 16 {
		return nil, errors.New("remote: the logic server needs a secret of at least 16 characters")
	}
	want := []byte("Bearer " + a.Secret)
	var refused, lastLog atomic.Int64
	check := func(ctx context.Context, method string) error {
		if strings.HasPrefix(method, healthPrefix) {
			return nil
		}
		md, _ := metadata.FromIncomingContext(ctx)
		got := md.Get("authorization")
		if len(got) == 1 && subtle.ConstantTimeCompare([]byte(got[0]), want) == 1 {
			return nil
		}
		n := refused.Add(1)
		if now, last := time.Now().UnixNano(), lastLog.Load(); a.Logger != nil && now-last > int64(10*time.Second) && lastLog.CompareAndSwap(last, now) {
			from := "?"
			if p, ok := peer.FromContext(ctx); ok {
				from = p.Addr.String()
			}
			a.Logger.Warn("audit: logic call refused: missing or wrong secret", "method", method, "remote", from, "refused_total", n)
		}
		return status.Error(codes.Unauthenticated, "logic: missing or wrong credentials (the gateway's --backend-secret must hold this logic's secret)")
	}
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := check(ctx, info.FullMethod); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := check(ss.Context(), info.FullMethod); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	}
	if a.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(a.TLS)))
	}
	return opts, nil
}

// RegisterHealth adds grpc.health.v1 to g, reporting LogicService (and the
// whole server, "") SERVING; call Shutdown on the result before stopping g
// so that balancers see NOT_SERVING while calls drain.
func RegisterHealth(g *grpc.Server) *health.Server {
	h := health.NewServer()
	h.SetServingStatus(pb.LogicService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, h)
	return h
}

// ClientAuth is how a Client authenticates to its instances.
type ClientAuth struct {
	Secret string      // required: the shared logic secret
	TLS    *tls.Config // optional: dial with TLS (from ClientTLS)
	// AllowPlaintext permits instances off loopback without TLS (the secret
	// then crosses the network in clear: only on a network you trust).
	AllowPlaintext bool
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

// RequireTransportSecurity is false: on loopback and unix sockets the
// secret travels in the clear inside the host; off the host, dialOptions
// refuses plaintext unless explicitly allowed.
func (bearer) RequireTransportSecurity() bool { return false }

// dialOptions returns the credentials for addrs, refusing an instance off
// this host without TLS unless AllowPlaintext.
func (a ClientAuth) dialOptions(addrs []string) ([]grpc.DialOption, error) {
	if a.Secret == "" {
		return nil, errors.New("remote: no logic secret (--backend-secret): every logic call must carry it")
	}
	if a.TLS == nil && !a.AllowPlaintext {
		for _, addr := range addrs {
			if !IsLocal(addr) {
				return nil, fmt.Errorf("remote: logic instance %q is not on this host and the link has no TLS (set --backend-tls-ca, or --backend-allow-plaintext on a network you trust)", addr)
			}
		}
	}
	tc := insecure.NewCredentials()
	if a.TLS != nil {
		tc = credentials.NewTLS(a.TLS)
	}
	return []grpc.DialOption{grpc.WithTransportCredentials(tc), grpc.WithPerRPCCredentials(bearer(a.Secret))}, nil
}

// IsLocal reports whether a gRPC address stays on this host: a unix socket,
// localhost, or a loopback IP. Host names other than localhost count as
// remote (they are not resolved).
func IsLocal(addr string) bool {
	if strings.HasPrefix(addr, "unix:") || strings.HasPrefix(addr, "unix-abstract:") {
		return true
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
