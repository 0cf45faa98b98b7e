package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/longlink/longlink/backend/logic"
	"github.com/longlink/longlink/internal/testutil"
	"github.com/longlink/longlink/push"
)

// TestLogicStoreOnEmbeddedNATS: `longlink logic --data D --store
// nats://127.0.0.1:…` on a gateway host's embedded NATS authenticates as
// the store role from D/nats.secret, as --nats does and the flag's help
// says, without --nats-secret; so does `longlink logic import --data D`.
func TestLogicStoreOnEmbeddedNATS(t *testing.T) {
	dir := t.TempDir()
	sec, _, err := push.LoadOrCreateSecret(filepath.Join(dir, push.SecretFile))
	if err != nil {
		t.Fatal(err)
	}
	ns, err := push.StartEmbedded(push.EmbeddedConfig{Listen: "127.0.0.1:0", JetStreamDir: filepath.Join(dir, "js"), Secret: sec})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	// `logic import` onto the host's embedded NATS (before the instance
	// starts on the store it filled): the same default.
	var dump strings.Builder
	src := filepath.Join(t.TempDir(), "logic.db")
	if l, err := logic.Open(src, logic.Config{Logger: testutil.Quiet()}); err != nil {
		t.Fatal(err)
	} else {
		l.Close()
	}
	if code := logicExport([]string{"--db", src}, &dump); code != 0 {
		t.Fatalf("export exited %d", code)
	}
	url := ns.ClientURL() + "?replicas=1"
	if code := logicImport([]string{"--data", t.TempDir(), "--store", url}, strings.NewReader(dump.String())); code == 0 {
		t.Fatal("import without the host's secret was let in")
	}
	if code := logicImport([]string{"--data", dir, "--store", url}, strings.NewReader(dump.String())); code != 0 {
		t.Fatalf("import with --data %s (its nats.secret) exited %d", dir, code)
	}

	startLogicCmd(t, "--data", dir, "--store", url)

	if got := storeSecretFile("nats://10.0.0.5:4222", "", "", "", dir); got != "" {
		t.Errorf("derived passwords offered to a NATS off the host: %q", got)
	}
	if got := storeSecretFile("nats://u:p@127.0.0.1:4222", "", "", "", dir); got != "" {
		t.Errorf("secret used beside URL credentials: %q", got)
	}
}
