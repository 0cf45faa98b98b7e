// Package shaketest builds small generated shake events for tests of the
// packages built on shake (opening, gateway, the chaos test, the load
// tool): a plan, its ticket keys, seal keys and the slot files in a
// directory, plus helpers to run an embedded JetStream server and to
// reconcile a ledger export. Not for production use.
package shaketest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/longlink/longlink/push"
	"github.com/longlink/longlink/shake"
)

// Budget is a small two-slot event: slot 1 with 6,000 packets, slot 2 with
// 4,000, two merchants.
const Budget = `
name: test
key_limit: 20000
packet: {min: 0.01, max: 20}
kinds:
  - name: image
merchants:
  - {id: acme, name: Acme, funds: 30000, payment_order: PO1, account: A1}
  - {id: bolt, name: Bolt, funds: 20000, payment_order: PO2, account: A2}
plans:
  - name: A
    funding:
      acme: {image: 30000}
      bolt: {image: 20000}
    slots:
      - id: 1
        start: "2020-01-01T00:00:00Z"
        end:   "2020-01-01T00:10:00Z"
        cells:
          image: {amount: 30000, count: 6000}
      - id: 2
        start: "2020-01-01T00:10:00Z"
        end:   "2020-01-01T00:20:00Z"
        cells:
          image: {amount: 20000, count: 4000}
`

// Event is a generated event on disk.
type Event struct {
	Dir      string // plan.json and slot files (whole slots)
	KeyDir   string // ticket keys (0700)
	SealDir  string // seal keys (0700)
	Plan     *shake.Plan
	Keys     *shake.KeyStore
	SealKeys *shake.SealKeys
}

// Generate writes Budget's plan A under root (a test's temp dir).
func Generate(tb testing.TB, root string) *Event {
	tb.Helper()
	ev, err := GenerateBudget(root, Budget)
	if err != nil {
		tb.Fatal(err)
	}
	return ev
}

// GenerateBudget writes plan A of budget under root: root/event,
// root/keys, root/sealkeys.
func GenerateBudget(root, budget string) (*Event, error) {
	b, err := shake.ParseBudget(strings.NewReader(budget))
	if err != nil {
		return nil, err
	}
	p, err := shake.BuildPlan(b, "A")
	if err != nil {
		return nil, err
	}
	ev := &Event{Dir: filepath.Join(root, "event"), KeyDir: filepath.Join(root, "keys"), SealDir: filepath.Join(root, "sealkeys"), Plan: p}
	if err := shake.CreateKeyStore(ev.KeyDir, p.Keys); err != nil {
		return nil, err
	}
	if err := shake.CreateKeyStore(ev.SealDir, 2); err != nil {
		return nil, err
	}
	if ev.Keys, err = shake.LoadKeyStore(ev.KeyDir); err != nil {
		return nil, err
	}
	sk, err := shake.LoadKeyStore(ev.SealDir)
	if err != nil {
		return nil, err
	}
	if ev.SealKeys, err = shake.NewSealKeys(sk); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(ev.Dir, 0o755); err != nil {
		return nil, err
	}
	if err := shake.Generate(p, ev.Keys, shake.GenOptions{Chunk: 2048}, shake.DirSink{Dir: ev.Dir}); err != nil {
		return nil, err
	}
	if err := p.WritePlan(ev.Dir); err != nil {
		return nil, err
	}
	// LoadPlan re-derives the tag: use the plan as the gateway will see it.
	if ev.Plan, err = shake.LoadPlan(ev.Dir); err != nil {
		return nil, err
	}
	return ev, nil
}

// Files lists the event's slot files.
func (ev *Event) Files() []string {
	var out []string
	for _, s := range ev.Plan.Slots {
		out = append(out, filepath.Join(ev.Dir, shake.SlotFileName(s.ID)))
	}
	return out
}

// Reconcile reconciles a ledger export against the event's files, users
// included (the export's sealed tickets against the seal keys).
func (ev *Event) Reconcile(ledgerCSV string) (*shake.ReconcileReport, error) {
	return shake.Reconcile(ev.Plan, ev.Keys, ev.Files(), ledgerCSV, shake.ReconcileOptions{SealKeys: ev.SealKeys})
}

// Verifier is the verifier an opener or the ledger of this event uses
// (ticket TTL one hour).
func (ev *Event) Verifier() *shake.Verifier {
	return shake.NewVerifier(ev.SealKeys, ev.Plan, ev.Keys, time.Hour, time.Minute, nil, nil)
}

// JetStream starts an embedded NATS server with JetStream storing in dir,
// on listen ("127.0.0.1:0" for any port).
func JetStream(tb testing.TB, listen, dir string) *server.Server {
	tb.Helper()
	ns, err := push.StartEmbedded(push.EmbeddedConfig{Listen: listen, JetStreamDir: dir})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}
