package shake

import (
	"bytes"
	"math"
	mrand "math/rand/v2"
	"os"
	"testing"
)

// drawBatch splits extra fen over n packets the way fill does.
func drawBatch(rng *mrand.ChaCha8, n, extra, width uint64) []uint64 {
	out := make([]uint64, 0, n)
	rem := extra
	for r := n; r > 0; r-- {
		x := drawExtra(rng, rem, r, width)
		rem -= x
		out = append(out, x)
	}
	return out
}

func TestSplitSumsExactWithinBounds(t *testing.T) {
	rng := mrand.NewChaCha8([32]byte{1})
	r := mrand.New(mrand.NewPCG(3, 4))
	for iter := 0; iter < 2000; iter++ {
		n := 1 + r.Uint64N(300)
		width := r.Uint64N(2000)
		var extra uint64
		switch iter % 4 {
		case 0:
			extra = 0 // every packet at min
		case 1:
			extra = n * width // every packet at max
		default:
			extra = r.Uint64N(n*width + 1)
		}
		xs := drawBatch(rng, n, extra, width)
		var sum uint64
		for _, x := range xs {
			if x > width {
				t.Fatalf("n=%d width=%d extra=%d: packet extra %d above width", n, width, extra, x)
			}
			sum += x
		}
		if sum != extra {
			t.Fatalf("n=%d width=%d: sum %d, want %d", n, width, sum, extra)
		}
	}
}

func TestSplitDistribution(t *testing.T) {
	rng := mrand.NewChaCha8([32]byte{2})
	// Mean below the middle: amounts spread uniformly on [0, 2×mean].
	const n, width = 200000, 20000
	mean := 3000.0
	xs := drawBatch(rng, n, uint64(mean*n), width)
	var s, s2 float64
	var hist [10]int
	for _, x := range xs[:n-100] { // the very last draws are squeezed
		f := float64(x)
		s += f
		s2 += f * f
		// The window follows the mean of what is left, which wanders
		// a little: allow draws just past twice the starting mean.
		if f > 2.05*mean {
			t.Fatalf("draw %v far beyond twice the mean", f)
		}
		hist[min(int(f/(2*mean)*10), 9)]++
	}
	m := s / float64(n-100)
	sd := math.Sqrt(s2/float64(n-100) - m*m)
	if math.Abs(m-mean)/mean > 0.01 {
		t.Errorf("mean %.1f, want %.1f", m, mean)
	}
	if want := 2 * mean / math.Sqrt(12); math.Abs(sd-want)/want > 0.03 {
		t.Errorf("sd %.1f, want about %.1f (uniform on [0, 2×mean])", sd, want)
	}
	for i, h := range hist {
		if exp := float64(n-100) / 10; math.Abs(float64(h)-exp)/exp > 0.05 {
			t.Errorf("decile %d holds %d draws, want about %.0f: %v", i, h, exp, hist)
		}
	}
	// Mean above the middle: mirrored, spread on [2×mean−width, width].
	mean = 15000
	xs = drawBatch(rng, n, uint64(mean*n), width)
	lo := uint64(2*mean-width) * 95 / 100 // the same small wander
	s = 0
	for _, x := range xs[:n-100] {
		if x < lo {
			t.Fatalf("draw %d below %d", x, lo)
		}
		s += float64(x)
	}
	if m := s / float64(n-100); math.Abs(m-mean)/mean > 0.01 {
		t.Errorf("mean %.1f, want %.1f", m, mean)
	}
}

func TestGenerateVerifies(t *testing.T) {
	g := generate(t, smallBudget, "seed-1")
	rep, err := Verify(g.plan, g.keys, g.files, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Records != g.plan.Packets {
		var b bytes.Buffer
		rep.Print(&b, g.plan)
		t.Fatalf("verify failed:\n%s", b.String())
	}
	for i, bt := range g.plan.Batches {
		if rep.Batches[i].Count != bt.Count || rep.Batches[i].Amount != bt.Amount {
			t.Errorf("batch %d: %+v, want %d/%v", i, rep.Batches[i], bt.Count, bt.Amount)
		}
	}
	if rep.MaxKeyAmount > g.plan.KeyLimit || rep.MaxKeyAmount < g.plan.KeyLimit/2 {
		t.Errorf("largest key sum %v with limit %v", rep.MaxKeyAmount, g.plan.KeyLimit)
	}
	if g.plan.Keys < 10 {
		t.Errorf("only %d keys for %v at %v each", g.plan.Keys, g.plan.Amount, g.plan.KeyLimit)
	}
}

// TestGenerateInterleaves checks that every merchant is spread over the
// whole slot: in each tenth of the file a merchant's share of packets is
// close to its share of the slot.
func TestGenerateInterleaves(t *testing.T) {
	g := generate(t, smallBudget, "seed-2")
	f, err := OpenFile(g.files[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	o := NewChecker(g.plan, g.keys, nil, nil).NewOpener()
	s := g.plan.Slots[0]
	want := make([]float64, len(g.plan.Merchants))
	for _, b := range g.plan.Batches[s.FirstBatch : s.FirstBatch+s.Batches] {
		want[b.Merchant] += float64(b.Count) / float64(s.Packets)
	}
	n := f.Len()
	for part := 0; part < 10; part++ {
		got := make([]float64, len(want))
		lo, hi := n*part/10, n*(part+1)/10
		for i := lo; i < hi; i++ {
			tk, err := o.Open(f.Record(i))
			if err != nil {
				t.Fatal(err)
			}
			got[g.plan.Batches[tk.Batch].Merchant] += 1 / float64(hi-lo)
		}
		for m := range want {
			if math.Abs(got[m]-want[m]) > 0.02 {
				t.Errorf("tenth %d: merchant %d holds %.3f of packets, slot share %.3f", part, m, got[m], want[m])
			}
		}
	}
	// Consecutive records come from different batches often: shuffled,
	// not batch after batch.
	changes := 0
	prev := uint32(math.MaxUint32)
	for i := 0; i < 1000; i++ {
		tk, _ := o.Open(f.Record(i))
		if tk.Batch != prev {
			changes++
		}
		prev = tk.Batch
	}
	if changes < 400 {
		t.Errorf("only %d batch changes in 1000 consecutive records", changes)
	}
}

func TestGenerateReproducible(t *testing.T) {
	p := mustPlan(t, smallBudget, "A")
	ks, err := RandomKeyStore(p.Keys)
	if err != nil {
		t.Fatal(err)
	}
	run := func(seed string, workers, chunk int) [][]byte {
		p := mustPlan(t, smallBudget, "A")
		dir := t.TempDir()
		if err := Generate(p, ks, GenOptions{Seed: []byte(seed), Workers: workers, Chunk: chunk}, DirSink{Dir: dir}); err != nil {
			t.Fatal(err)
		}
		var out [][]byte
		for _, s := range p.Slots {
			b, err := os.ReadFile(dir + "/" + SlotFileName(s.ID))
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, b)
		}
		return out
	}
	a, b, c := run("s", 1, 4096), run("s", 3, 4096), run("t", 2, 4096)
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			t.Errorf("slot %d differs between 1 and 3 workers with the same seed", i)
		}
		if bytes.Equal(a[i][HeaderSize:], c[i][HeaderSize:]) {
			t.Errorf("slot %d identical under different seeds", i)
		}
	}
}

func TestGenerateNeedsKeys(t *testing.T) {
	p := mustPlan(t, smallBudget, "A")
	ks, _ := RandomKeyStore(p.Keys - 1)
	if err := Generate(p, ks, GenOptions{}, DiscardSink{}); err == nil {
		t.Fatal("generated with too few keys")
	}
}
