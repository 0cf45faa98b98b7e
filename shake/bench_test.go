package shake

import (
	"fmt"
	"strings"
	"testing"
)

// benchBudget has one slot of n packets spread over 30 merchants and 3
// kinds (90 batches), like an event slot.
func benchBudget(n int) string {
	var b strings.Builder
	per := n / 90
	fmt.Fprintf(&b, "name: bench\npacket: {min: 0.01, max: 200}\nkinds: [{name: image}, {name: video}, {name: logo}]\nmerchants:\n")
	for m := 0; m < 30; m++ {
		fmt.Fprintf(&b, "  - {id: m%d, funds: %d}\n", m, 3*per)
	}
	fmt.Fprintf(&b, "plans:\n  - name: A\n    funding:\n")
	for m := 0; m < 30; m++ {
		fmt.Fprintf(&b, "      m%d: {image: %d, video: %d, logo: %d}\n", m, per, per, per)
	}
	fmt.Fprintf(&b, "    slots:\n      - id: 1\n        cells:\n")
	for _, k := range []string{"image", "video", "logo"} {
		fmt.Fprintf(&b, "          %s: {amount: %d, count: %d}\n", k, 30*per, 30*per)
	}
	return b.String()
}

func benchGenerate(b *testing.B, sink func(b *testing.B) SlotSink) {
	const n = 4_500_000 // records per op
	src := benchBudget(n)
	p := mustPlan(b, src, "A")
	ks, err := RandomKeyStore(p.Keys)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(p.Packets) * RecordSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p := mustPlan(b, src, "A")
		if err := Generate(p, ks, GenOptions{}, sink(b)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(p.Packets)*float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkGenerateNoDisk: split, interleave, shuffle, encrypt; records
// discarded. Both cores.
func BenchmarkGenerateNoDisk(b *testing.B) {
	benchGenerate(b, func(*testing.B) SlotSink { return DiscardSink{} })
}

// BenchmarkGenerateDisk: the same written to a file with fsync.
func BenchmarkGenerateDisk(b *testing.B) {
	benchGenerate(b, func(b *testing.B) SlotSink { return DirSink{Dir: b.TempDir()} })
}

// BenchmarkVerify: decrypt and check every record of a 4.5M-record file
// (page cache warm), dedupe, totals.
func BenchmarkVerify(b *testing.B) {
	const n = 4_500_000
	p := mustPlan(b, benchBudget(n), "A")
	ks, _ := RandomKeyStore(p.Keys)
	g := generateWith(b, p, ks, "bench")
	b.SetBytes(int64(p.Packets) * RecordSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r, err := Verify(g.plan, g.keys, g.files, VerifyOptions{})
		if err != nil || !r.OK() {
			b.Fatalf("verify: %v %+v", err, r)
		}
	}
	b.ReportMetric(float64(p.Packets)*float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkDispenseOpen: the gateway's per-shake work on a mapped file,
// one goroutine: take the next record, decrypt and verify it.
func BenchmarkDispenseOpen(b *testing.B) {
	g := generate(b, smallBudget, "bench")
	f, err := OpenFile(g.files[0])
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	o := NewChecker(g.plan, g.keys, nil, nil).NewOpener()
	b.ReportAllocs()
	b.ResetTimer()
	d := NewDispenser(f, 0)
	for i := 0; i < b.N; i++ {
		rec, _, ok := d.Next()
		if !ok {
			d = NewDispenser(f, 0)
			rec, _, _ = d.Next()
		}
		if _, err := o.Open(rec); err != nil {
			b.Fatal(err)
		}
	}
}
