package shake

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// smallBudget has two slots, three merchants and three kinds: about 60k
// packets, quick under -race.
const smallBudget = `
name: small
key_limit: 20000
packet: {min: 0.01, max: 20}
kinds:
  - name: image
  - name: video
    min: 1
    max: 5
  - name: logo
merchants:
  - {id: acme,  name: Acme,  funds: 100000, payment_order: PO1, account: A1}
  - {id: bolt,  name: Bolt,  funds: 60000,  payment_order: PO2, account: A2}
  - {id: cider, name: Cider, funds: 25000.5, payment_order: PO3, account: A3}
plans:
  - name: A
    funding:
      acme:  {image: 60000, logo: 40000}
      bolt:  {image: 30000, video: 30000}
      cider: {logo: 25000.5}
    slots:
      - id: 1
        budget: 100000
        cells:
          image: {amount: 45000, count: 20000}
          video: {amount: 15000, count: 5000}
          logo:  {amount: 32500.25, count: 8000}
      - id: 7
        cells:
          image: {amount: 45000, count: 15000}
          video: {amount: 15000, count: 4000}
          logo:  {amount: 32500.25, count: 7001}
`

func mustBudget(t testing.TB, src string) *Budget {
	t.Helper()
	b, err := ParseBudget(strings.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustPlan(t testing.TB, src, name string) *Plan {
	t.Helper()
	p, err := BuildPlan(mustBudget(t, src), name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// generated is a generated small plan in a temp dir.
type generated struct {
	plan  *Plan
	keys  *KeyStore
	dir   string
	files []string
}

func generate(t testing.TB, src string, seed string) *generated {
	t.Helper()
	p := mustPlan(t, src, "A")
	ks, err := RandomKeyStore(p.Keys + 3)
	if err != nil {
		t.Fatal(err)
	}
	return generateWith(t, p, ks, seed)
}

func generateWith(t testing.TB, p *Plan, ks *KeyStore, seed string) *generated {
	t.Helper()
	dir := t.TempDir()
	opts := GenOptions{Chunk: 4096}
	if seed != "" {
		opts.Seed = []byte(seed)
	}
	if err := Generate(p, ks, opts, DirSink{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	if err := p.WritePlan(dir); err != nil {
		t.Fatal(err)
	}
	g := &generated{plan: p, keys: ks, dir: dir}
	for _, s := range p.Slots {
		g.files = append(g.files, filepath.Join(dir, SlotFileName(s.ID)))
	}
	return g
}

// rewriteRecords applies edit to a ticket file's records and fixes the
// record checksum, so that only the tickets themselves can catch it.
func rewriteRecords(t testing.TB, path string, edit func(recs []byte)) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := ParseHeader(data)
	if err != nil {
		t.Fatal(err)
	}
	edit(data[HeaderSize:])
	h.RecordCRC = crc32c(data[HeaderSize:])
	copy(data, h.Marshal())
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
