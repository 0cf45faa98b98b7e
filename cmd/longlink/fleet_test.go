package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/longlink/longlink/fleet"
	"github.com/longlink/longlink/internal/testutil"
	"github.com/longlink/longlink/push"
)

func TestKeysFleetRotateRetire(t *testing.T) {
	dir := t.TempDir()
	if rc := runKeys([]string{"--fleet", "--data", dir}); rc != 0 {
		t.Fatalf("create: rc %d", rc)
	}
	if rc := runKeys([]string{"--fleet", "--data", dir, "--new"}); rc != 0 {
		t.Fatalf("rotate: rc %d", rc)
	}
	r, err := fleet.LoadKeys(filepath.Join(dir, fleet.KeyFile))
	if err != nil || r.Active() != 2 || len(r.IDs()) != 2 || r.Pins()[0].ID != 2 {
		t.Fatalf("after rotation: %v %v", r, err)
	}
	if rc := runKeys([]string{"--fleet", "--data", dir, "--retire", "2"}); rc != 2 {
		t.Fatalf("retiring the active key: rc %d", rc)
	}
	if rc := runKeys([]string{"--fleet", "--data", dir, "--retire", "1"}); rc != 0 {
		t.Fatalf("retire: rc %d", rc)
	}
	if r, _ := fleet.LoadKeys(filepath.Join(dir, fleet.KeyFile)); len(r.IDs()) != 1 {
		t.Fatalf("after retiring 1: %v", r.IDs())
	}
}

func TestEvacuateArgs(t *testing.T) {
	b, err := evacuateArgs([]string{"--rate", "200/s", "--jitter"})
	if err != nil || b["rate"] != 200.0 || b["jitter"] != true {
		t.Fatalf("%v %v", b, err)
	}
	if b, err := evacuateArgs([]string{"stop"}); err != nil || b["stop"] != true {
		t.Fatalf("stop: %v %v", b, err)
	}
	for _, bad := range [][]string{{}, {"--rate", "0"}, {"--rate", "fast"}} {
		if _, err := evacuateArgs(bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

func TestFleetFlagsRefuseBadTags(t *testing.T) {
	fs := newFlagSet("gateway", "")
	ff := addFleetFlags(fs)
	dir := t.TempDir()
	if err := fs.Parse([]string{"--host-id", "a.b", "--data-unused"}[:2]); err != nil {
		t.Fatal(err)
	}
	if _, err := ff.config(dir, "nats://127.0.0.1:1"); err == nil {
		t.Fatal("host id with a dot accepted (it is a NATS subject token)")
	}
	if fc, err := ff.config(dir, ""); fc != nil || err != nil {
		t.Fatalf("no NATS: %v %v, want no fleet", fc, err)
	}
}

// TestFleetKeysPublishAndAdminOverNATS runs the real binary (a supervisor
// with 2 workers) on an external JetStream NATS: fleet keys rotated
// elsewhere and published with `longlink keys publish` are written and
// reloaded by the running gateway (lists signed by the new key from every
// worker), and `longlink admin --host` changes its switches over NATS.
func TestFleetKeysPublishAndAdminOverNATS(t *testing.T) {
	ns, err := push.StartEmbedded(push.EmbeddedConfig{Listen: "127.0.0.1:0", JetStreamDir: t.TempDir(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown) // after the gateway's stop (StartLonglink's cleanup)
	url := ns.ClientURL()
	dir := t.TempDir()
	listen, admin, httpAddr := testutil.FreeAddr(t), testutil.FreeAddr(t), testutil.FreeAddr(t)
	testutil.StartLonglink(t, dir, "gateway", "--workers", "2", "--data", dir, "--listen", listen, "--admin", admin, "--http", httpAddr,
		"--nats", url, "--push-grpc=", "--backend", "echo", "--drain", "100ms", "--log-level", "warn",
		"--host-id", "h1", "--region", "north", "--fleet-interval", "200ms")
	hc := &http.Client{Timeout: time.Second}
	keyID := func() uint32 {
		r, err := hc.Get("http://" + httpAddr + "/v1/nodes")
		if err != nil {
			return 0
		}
		defer r.Body.Close()
		var out struct {
			KeyID uint32 `json:"key_id"`
			Nodes []struct{ Host string }
		}
		if json.NewDecoder(r.Body).Decode(&out) != nil || len(out.Nodes) == 0 || out.Nodes[0].Host != "h1" {
			return 0
		}
		return out.KeyID
	}
	waitKey := func(want uint32) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for n := 0; n < 8; { // several in a row: both workers
			if keyID() == want {
				n++
				continue
			}
			n = 0
			if time.Now().After(deadline) {
				t.Fatalf("lists never all signed by fleet key %d (last %d)", want, keyID())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitKey(1)

	// Rotate in another directory (an operator's machine) and publish.
	other := t.TempDir()
	raw, err := os.ReadFile(filepath.Join(dir, fleet.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(other, fleet.KeyFile), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if rc := runKeys([]string{"--fleet", "--data", other, "--new"}); rc != 0 {
		t.Fatalf("rotate: rc %d", rc)
	}
	if rc := runKeys([]string{"publish", "--fleet", "--data", other, "--nats", url}); rc != 0 {
		t.Fatalf("publish: rc %d", rc)
	}
	waitKey(2)
	if r, err := fleet.LoadKeys(filepath.Join(dir, fleet.KeyFile)); err != nil || r.Active() != 2 {
		t.Fatalf("the host's key file after the publish: %v %v", r, err)
	}

	// Admin over NATS, to this host by its id.
	if rc := runAdmin([]string{"--nats", url, "--host", "h1", "set", "degrade=1"}); rc != 0 {
		t.Fatalf("admin --host h1: rc %d", rc)
	}
	tok, _ := os.ReadFile(filepath.Join(dir, "admin.token"))
	req, _ := http.NewRequest("GET", "http://"+admin+"/switches", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var sw struct{ Degrade int }
	_ = json.NewDecoder(resp.Body).Decode(&sw)
	resp.Body.Close()
	if sw.Degrade != 1 {
		t.Fatalf("degrade %d after admin over NATS, want 1", sw.Degrade)
	}
	if rc := runAdmin([]string{"--nats", url, "--host", "nosuchhost", "switches"}); rc == 0 {
		t.Fatal("admin to an absent host succeeded")
	}
}

func TestApplyDistributedKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, fleet.KeyFile)
	r, _, err := fleet.LoadOrCreateKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	paths := map[string]string{fleet.KeyFleet: path}
	orig, _ := os.ReadFile(path)
	if applyDistributedKey(log, paths, fleet.KeyFleet, orig, 1) {
		t.Fatal("the same bytes were written again")
	}
	if applyDistributedKey(log, paths, fleet.KeyFleet, []byte(`{"active": 9, "keys": []}`), 2) {
		t.Fatal("a key file its loader refuses was written")
	}
	if now, _ := os.ReadFile(path); string(now) != string(orig) {
		t.Fatal("a refused entry changed the file")
	}
	r2, _ := r.Rotate()
	b, _ := fleet.MarshalKeys(r2.Keys(), r2.Active())
	if !applyDistributedKey(log, paths, fleet.KeyFleet, b, 3) {
		t.Fatal("a good rotation was not written")
	}
	if got, err := fleet.LoadKeys(path); err != nil || got.Active() != 2 {
		t.Fatalf("after the rotation: %v %v", got, err)
	}
	if applyDistributedKey(log, paths, fleet.KeyToken, b, 4) {
		t.Fatal("an entry without a local path was written")
	}
}
