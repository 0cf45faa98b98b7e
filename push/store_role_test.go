package push_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/longlink/longlink/backend"
	"github.com/longlink/longlink/backend/logic"
	"github.com/longlink/longlink/proto/pb"
	"github.com/longlink/longlink/push"
)

// The logic's replicated store runs on a host's authenticated embedded NATS
// with the "store" role: it can keep its stream, and nothing else.
func TestStoreRoleRunsTheLogicStore(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, push.SecretFile)
	sec, _, err := push.LoadOrCreateSecret(secretFile)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := push.StartEmbedded(push.EmbeddedConfig{Listen: "127.0.0.1:0", JetStreamDir: filepath.Join(dir, "js"), Secret: sec})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	url := ns.ClientURL() + "?replicas=1"
	if _, err := logic.OpenStore(url, logic.StoreOptions{}); err == nil {
		t.Fatal("the store opened without credentials")
	}
	st, err := logic.OpenStore(url, logic.StoreOptions{SecretFile: secretFile})
	if err != nil {
		t.Fatalf("store role: %v", err)
	}
	l, err := logic.New(st, logic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	send, _ := proto.Marshal(&pb.SendRequest{To: 2, Text: "over the store role"})
	if _, err := l.Call(ctx, &backend.Request{UID: 1, Method: logic.MethodSend, Body: send}); err != nil {
		t.Fatalf("send: %v", err)
	}
	sync, _ := proto.Marshal(&pb.SyncRequest{})
	b, err := l.Call(ctx, &backend.Request{UID: 2, Method: logic.MethodSync, Body: sync})
	var rep pb.SyncReply
	if err != nil || proto.Unmarshal(b, &rep) != nil || len(rep.Items) != 1 {
		t.Fatalf("sync: %v %v", &rep, err)
	}
}
