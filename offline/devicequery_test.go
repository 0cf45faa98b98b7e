package offline

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/longlink/longlink/push"
)

type fakeSink struct{ devs map[uint64][]string }

func (fakeSink) Deliver(*push.Deliver) {}
func (s fakeSink) Snapshot(fn func(uint64, int)) {
	for u, d := range s.devs {
		fn(u, len(d))
	}
}
func (fakeSink) Resync() {}
func (s fakeSink) Devices(uid uint64, fn func(string)) {
	for _, d := range s.devs[uid] {
		fn(d)
	}
}

// TestDeviceQueryOverNATS: a separate sender (role offline) asks the
// router (role router), which asks the node holding the user (role
// gateway), with the embedded server's real permissions.
func TestDeviceQueryOverNATS(t *testing.T) {
	ne := startNATS(t, t.TempDir())
	r, err := push.NewRouter(push.RouterConfig{Conn: ne.conn(t, push.RoleRouter), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	n, err := push.StartNode(push.NodeConfig{Node: "n1", URLs: ne.url, Logger: quiet, Options: []nats.Option{push.ClientAuth{Secret: ne.sec}.As(push.RoleGateway)}},
		fakeSink{devs: map[uint64][]string{5: {"phone", "pad"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	waitFor(t, 5*time.Second, "presence", func() bool { return len(r.Registry().Lookup(5, nil)) == 1 })
	nc := ne.conn(t, push.RoleOffline)
	got, err := push.AskDevices(ctxT(t, 5*time.Second), nc, 5)
	if err != nil || len(got) != 2 || got[0] != "phone" || got[1] != "pad" {
		t.Fatalf("devices of 5: %v %v", got, err)
	}
	if got, err := push.AskDevices(ctxT(t, 5*time.Second), nc, 6); err != nil || len(got) != 0 {
		t.Fatalf("devices of an absent user: %v %v", got, err)
	}
}
