package shake

import (
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestParseMoney(t *testing.T) {
	good := map[string]Money{"0": 0, "0.01": 1, "1.5": 150, "300000": 30000000, "¥12.34": 1234, " 7 ": 700}
	for s, want := range good {
		got, err := ParseMoney(s)
		if err != nil || got != want {
			t.Errorf("ParseMoney(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"", "1.234", "-1", "1e3", ".5", "5.", "abc", "1,000", "99999999999999999999"} {
		if _, err := ParseMoney(s); err == nil {
			t.Errorf("ParseMoney(%q) accepted", s)
		}
	}
	if s := Money(30000001).String(); s != "300000.01" {
		t.Errorf("String = %q", s)
	}
}

func TestBudgetValid(t *testing.T) {
	b := mustBudget(t, smallBudget)
	if b.KeyLimit != 20000_00 || len(b.Plans) != 1 {
		t.Fatalf("budget %+v", b)
	}
	// JSON is accepted too.
	js := `{"name":"j","packet":{"min":"0.01","max":100},"kinds":[{"name":"k"}],
	  "merchants":[{"id":"m","funds":1000}],
	  "plans":[{"name":"A","funding":{"m":{"k":1000}},"slots":[{"id":1,"cells":{"k":{"amount":1000,"count":100}}}]}]}`
	jb := mustBudget(t, js)
	if jb.KeyLimit != DefaultKeyLimit {
		t.Errorf("default key limit %v", jb.KeyLimit)
	}
}

func TestBudgetErrors(t *testing.T) {
	cases := []struct {
		name, from, to, want string
	}{
		{"over-committed merchant", "funds: 25000.5,", "funds: 25000,", `merchant "cider" commits 25000.50 but has only 25000.00`},
		{"kind totals differ", "logo:  {amount: 32500.25, count: 7001}", "logo:  {amount: 32500.20, count: 7001}", `kind "logo": slots hand out 65000.45 but merchants fund 65000.50`},
		{"below min", "video: {amount: 15000, count: 4000}", "video: {amount: 15000, count: 40000}", "is less than 40000 packets × min 1.00"},
		{"above max", "image: {amount: 45000, count: 15000}", "image: {amount: 45000, count: 150}", "is more than 150 packets × max 20.00"},
		{"slot over budget", "budget: 100000", "budget: 90000", "over the slot budget 90000.00"},
		{"unknown merchant", "bolt:  {image: 30000", "bolx:  {image: 30000", `unknown merchant "bolx"`},
		{"unknown kind", "video: {amount: 15000, count: 5000}", "vidoe: {amount: 15000, count: 5000}", `unknown kind "vidoe"`},
		{"min above max", "min: 1\n    max: 5", "min: 6\n    max: 5", "max 5.00 below min 6.00"},
		{"unknown field", "budget: 100000", "budgett: 100000", "field budgett not found"},
		{"bad amount", "funds: 60000,", "funds: 60000.001,", "at most two decimals"},
		{"duplicate slot", "- id: 7", "- id: 1", "slot id used twice"},
		{"key limit too small", "key_limit: 20000", "key_limit: 30", "key_limit 30.00 must be at least twice"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := strings.Replace(smallBudget, c.from, c.to, 1)
			if src == smallBudget {
				t.Fatalf("replacement %q not found", c.from)
			}
			_, err := ParseBudget(strings.NewReader(src))
			if !errors.Is(err, ErrBadBudget) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v\nwant an ErrBadBudget containing %q", err, c.want)
			}
		})
	}
}

func TestPlanBatchesExact(t *testing.T) {
	p := mustPlan(t, smallBudget, "A")
	b := mustBudget(t, smallBudget)
	spec := b.Plans[0]
	perMerchantKind := map[[2]string]Money{}
	perCell := map[string]Money{}
	cellCount := map[string]uint64{}
	for _, bt := range p.Batches {
		m := p.Merchants[bt.Merchant].ID
		perMerchantKind[[2]string{m, bt.Kind}] += bt.Amount
		key := string(rune(bt.Slot)) + bt.Kind
		perCell[key] += bt.Amount
		cellCount[key] += bt.Count
		if lo, _ := mulMoney(bt.Min, bt.Count); bt.Amount < lo {
			t.Errorf("batch %d infeasible: %v < %d×%v", bt.ID, bt.Amount, bt.Count, bt.Min)
		}
		if hi, _ := mulMoney(bt.Max, bt.Count); bt.Amount > hi {
			t.Errorf("batch %d infeasible: %v > %d×%v", bt.ID, bt.Amount, bt.Count, bt.Max)
		}
	}
	for m, kinds := range spec.Funding {
		for k, amt := range kinds {
			if got := perMerchantKind[[2]string{m, k}]; got != amt {
				t.Errorf("merchant %s kind %s: batches %v, funding %v", m, k, got, amt)
			}
		}
	}
	for _, s := range spec.Slots {
		for k, c := range s.Cells {
			key := string(rune(s.ID)) + k
			if perCell[key] != c.Amount || cellCount[key] != c.Count {
				t.Errorf("slot %d kind %s: batches %v/%d, cell %v/%d", s.ID, k, perCell[key], cellCount[key], c.Amount, c.Count)
			}
		}
	}
	if err := p.check(); err != nil {
		t.Fatal(err)
	}
}

func TestMatrixRound(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 500; iter++ {
		f := make([]Money, 1+r.IntN(6))
		c := make([]Money, 1+r.IntN(8))
		total := Money(0)
		for i := range f {
			f[i] = Money(r.Int64N(1e9))
			total += f[i]
		}
		left := total
		for j := range c {
			if j == len(c)-1 {
				c[j] = left
			} else {
				c[j] = Money(r.Int64N(int64(left) + 1))
				left -= c[j]
			}
		}
		a := matrixRound(f, c)
		colSum := make([]Money, len(c))
		for m := range f {
			rowSum := Money(0)
			for j := range c {
				if a[m][j] < 0 {
					t.Fatalf("negative entry")
				}
				rowSum += a[m][j]
				colSum[j] += a[m][j]
				if total > 0 {
					ideal := float64(f[m]) * float64(c[j]) / float64(total)
					if d := float64(a[m][j]) - ideal; d > float64(len(c)+len(f)) || d < -1 {
						t.Fatalf("entry %v far from ideal %v", a[m][j], ideal)
					}
				}
			}
			if rowSum != f[m] {
				t.Fatalf("row %d sums to %v, want %v", m, rowSum, f[m])
			}
		}
		for j := range c {
			if colSum[j] != c[j] {
				t.Fatalf("column %d sums to %v, want %v", j, colSum[j], c[j])
			}
		}
	}
}

func FuzzParseBudget(f *testing.F) {
	f.Add([]byte(smallBudget))
	f.Add([]byte(`{"name":"j","kinds":[{"name":"k"}],"merchants":[{"id":"m","funds":1}],"plans":[]}`))
	f.Add([]byte("kinds: [{name: a, min: 0.01, max: 1}]\nplans: [{name: A, slots: [{id: 1, cells: {a: {amount: 1, count: 1}}}]}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseBudget(strings.NewReader(string(data)))
		if err != nil {
			if !errors.Is(err, ErrBadBudget) {
				t.Fatalf("error not ErrBadBudget: %v", err)
			}
			return
		}
		// A budget that validates must build into consistent plans, or
		// fail with an error, never panic.
		for _, ps := range b.Plans {
			if p, err := BuildPlan(b, ps.Name); err == nil {
				if err := p.check(); err != nil {
					t.Fatalf("plan %q inconsistent: %v", ps.Name, err)
				}
			}
		}
	})
}

func FuzzParseMoney(f *testing.F) {
	for _, s := range []string{"0.01", "300000", "1.5", "¥2", "9223372036854775807"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseMoney(s)
		if err != nil {
			return
		}
		if m < 0 {
			t.Fatalf("%q parsed negative: %d", s, m)
		}
		if back, err := ParseMoney(m.String()); err != nil || back != m {
			t.Fatalf("%q → %v does not round-trip: %v %v", s, m, back, err)
		}
	})
}
