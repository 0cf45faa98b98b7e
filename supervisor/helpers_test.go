package supervisor

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/gateway"
	"github.com/longlink/longlink/internal/testutil"
	"github.com/longlink/longlink/internal/testutil/gatewaytest"
)

var testKeys = func() *auth.KeySet {
	ks, err := auth.NewKeySet(1, map[uint32][]byte{1: []byte("0123456789abcdef0123456789abcdef")})
	if err != nil {
		panic(err)
	}
	return ks
}()

// startServer runs a gateway on 127.0.0.1:0 with logging off.
func startServer(t testing.TB, mod func(*gateway.Config)) *gateway.Server {
	t.Helper()
	cfg := gateway.Config{Keys: testKeys, Loops: 2, WheelTick: 20 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	return gatewaytest.Start(t, cfg)
}

// gather returns a gateway's own series (its registry, as its /metrics).
func gather(t testing.TB, s *gateway.Server) []*dto.MetricFamily {
	t.Helper()
	g, ok := s.Registerer().(prometheus.Gatherer)
	if !ok {
		t.Fatal("the gateway's registerer is not a gatherer")
	}
	fams, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// checkFor polls fn until it returns nil or timeout passes (testutil.CheckFor).
func checkFor(t testing.TB, timeout time.Duration, fn func() error) {
	t.Helper()
	testutil.CheckFor(t, timeout, fn)
}

func findLink(st gateway.Status, name string) (gateway.Link, bool) {
	for _, l := range st.Links {
		if l.Name == name {
			return l, true
		}
	}
	return gateway.Link{}, false
}
