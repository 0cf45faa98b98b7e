package push

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// PushTokenFile is the PushService token's file name in the data directory.
const PushTokenFile = "push.token"

// tokenInterceptor refuses every call without "authorization: Bearer <t>"
// for one of tokens (compared in constant time). Health checks are open:
// a balancer must be able to ask without a secret.
func tokenInterceptor(tokens []string) grpc.UnaryServerInterceptor {
	check := tokenCheck(tokens)
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := check(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// tokenStreamInterceptor is the same for streaming methods (health's Watch
// today; any added later is covered).
func tokenStreamInterceptor(tokens []string) grpc.StreamServerInterceptor {
	check := tokenCheck(tokens)
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := check(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return handler(srv, ss)
	}
}

func tokenCheck(tokens []string) func(context.Context, string) error {
	want := make([][]byte, 0, len(tokens))
	for _, t := range tokens {
		if t = strings.TrimSpace(t); t != "" {
			want = append(want, []byte(t))
		}
	}
	return func(ctx context.Context, method string) error {
		if strings.HasPrefix(method, "/grpc.health.v1.Health/") {
			return nil
		}
		md, _ := metadata.FromIncomingContext(ctx)
		for _, v := range md.Get("authorization") {
			got, ok := strings.CutPrefix(v, "Bearer ")
			if !ok {
				continue
			}
			for _, w := range want {
				if subtle.ConstantTimeCompare([]byte(got), w) == 1 {
					return nil
				}
			}
		}
		return status.Error(codes.Unauthenticated, "push: a bearer token (the push token or the admin token) is required")
	}
}

// BearerToken is the client side: per-call credentials for PushService
// (grpc.WithPerRPCCredentials). It does not insist on TLS, so that a
// loopback caller needs none; across hosts use TLS transport credentials.
type BearerToken string

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (t BearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (BearerToken) RequireTransportSecurity() bool { return false }

var _ credentials.PerRPCCredentials = BearerToken("")

// LoadOrCreateToken reads a token file, creating it (0600, random) if
// absent and create is set. A token file others may read is refused.
func LoadOrCreateToken(path string, create bool) (string, bool, error) {
	st, err := os.Stat(path)
	if err == nil {
		if st.Mode().Perm()&0o077 != 0 {
			return "", false, fmt.Errorf("push: token file %s is mode %#o: readable by others (chmod 600 it)", path, st.Mode().Perm())
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return "", false, err
		}
		tok := strings.TrimSpace(string(raw))
		if tok == "" {
			return "", false, fmt.Errorf("push: token file %s is empty", path)
		}
		return tok, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) || !create {
		return "", false, fmt.Errorf("push: token file: %w", err)
	}
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", false, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return LoadOrCreateToken(path, false)
	}
	if err != nil {
		return "", false, err
	}
	defer f.Close()
	tok := hex.EncodeToString(b)
	if _, err := f.WriteString(tok + "\n"); err != nil {
		return "", false, err
	}
	return tok, true, nil
}
