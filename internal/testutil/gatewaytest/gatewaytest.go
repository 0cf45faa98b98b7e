// Package gatewaytest starts real gateways for the tests of the packages
// built around one (client, supervisor, web, the load tool, the logic
// benchmarks). It is imported by _test.go files only; gateway's own tests
// cannot use it (it imports gateway).
package gatewaytest

import (
	"testing"

	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/internal/testutil"
)

// Start runs a gateway with cfg, on 127.0.0.1:0 unless cfg.Listen is set
// and with logging off unless cfg.Logger is, and closes it at cleanup.
// Other fields are the caller's (a zero Loops is gateway's default).
func Start(t testing.TB, cfg gateway.Config) *gateway.Server {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = testutil.Quiet()
	}
	s, err := gateway.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}
