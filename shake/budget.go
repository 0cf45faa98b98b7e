package shake

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Limits of the ticket layout (see ticket.go); the budget is checked
// against them so that every plan it yields can be encoded.
const (
	MaxPacketAmount = Money(1<<amountBits - 1) // ¥167,772.15
	MaxBatches      = 1 << batchBits
	MaxKeys         = 1 << kidBits
	MaxPackets      = uint64(1) << pidBits
	// DefaultKeyLimit is the most money one key may encrypt (¥300,000).
	DefaultKeyLimit = Money(300_000_00)
)

// Budget is the funding model of one event (资金预算): who pays how much,
// the red-packet kinds, and one or more plans (资金剧本) that turn the
// money into time slots. Several plans can be generated from one budget so
// that a late change of the event script is a switch, not a regeneration.
type Budget struct {
	Name      string     `yaml:"name"`
	KeyLimit  Money      `yaml:"key_limit"` // per key; default DefaultKeyLimit
	Packet    Bounds     `yaml:"packet"`    // default per-packet bounds
	Kinds     []Kind     `yaml:"kinds"`
	Merchants []Merchant `yaml:"merchants"`
	Plans     []PlanSpec `yaml:"plans"`
}

// Bounds are the per-packet minimum and maximum.
type Bounds struct {
	Min Money `yaml:"min"`
	Max Money `yaml:"max"`
}

// Kind is a red-packet kind (image, video, logo …), optionally with its own
// per-packet bounds.
type Kind struct {
	Name string `yaml:"name"`
	Min  Money  `yaml:"min"`
	Max  Money  `yaml:"max"`
}

// Merchant is a sponsor. PaymentOrder and Account go into the batch
// configuration (plan.json), never into tickets.
type Merchant struct {
	ID           string `yaml:"id" json:"id"`
	Name         string `yaml:"name" json:"name"`
	Funds        Money  `yaml:"funds" json:"funds"`
	PaymentOrder string `yaml:"payment_order" json:"payment_order"`
	Account      string `yaml:"account" json:"account"`
}

// PlanSpec is one funding plan: how much each merchant puts into each kind,
// and the time slots with amount and count per kind.
type PlanSpec struct {
	Name    string                      `yaml:"name"`
	Funding map[string]map[string]Money `yaml:"funding"` // merchant id → kind → amount
	Slots   []SlotSpec                  `yaml:"slots"`
}

// SlotSpec is one time slot of the event.
type SlotSpec struct {
	ID     uint32          `yaml:"id"`
	Start  string          `yaml:"start"`
	End    string          `yaml:"end"`
	Budget Money           `yaml:"budget"` // optional cap on the slot's total
	Cells  map[string]Cell `yaml:"cells"`  // kind → amount and count
}

// Cell is the money and packet count of one kind in one slot.
type Cell struct {
	Amount Money  `yaml:"amount"`
	Count  uint64 `yaml:"count"`
}

// maxBudgetBytes bounds what ParseBudget reads; real budgets are kilobytes.
const maxBudgetBytes = 16 << 20

// LoadBudget reads and validates a budget file (YAML or JSON).
func LoadBudget(path string) (*Budget, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := ParseBudget(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// ParseBudget decodes a budget (YAML, or JSON which is YAML too), rejecting
// unknown fields, and validates it. Every problem found is reported, each
// with where it is; the error wraps ErrBadBudget.
func ParseBudget(r io.Reader) (*Budget, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxBudgetBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxBudgetBytes {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrBadBudget, maxBudgetBytes)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var b Budget
	if err := dec.Decode(&b); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: empty file", ErrBadBudget)
		}
		return nil, fmt.Errorf("%w: %v", ErrBadBudget, err)
	}
	if err := b.Validate(); err != nil {
		return nil, err
	}
	return &b, nil
}

// kindBounds returns the effective bounds of kind k.
func (b *Budget) kindBounds(k Kind) Bounds {
	bd := b.Packet
	if k.Min != 0 {
		bd.Min = k.Min
	}
	if k.Max != 0 {
		bd.Max = k.Max
	}
	return bd
}

// Validate fills defaults and checks the whole budget: names unique and
// known, bounds feasible and encodable, every merchant within its funds,
// per kind the slots hand out exactly what the merchants fund, every cell
// feasible within its bounds, no slot over its budget. It returns all
// problems joined, wrapping ErrBadBudget.
func (b *Budget) Validate() error {
	var errs []string
	add := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	if b.KeyLimit == 0 {
		b.KeyLimit = DefaultKeyLimit
	}
	if len(b.Kinds) == 0 {
		add("kinds: at least one kind is needed")
	}
	kinds := map[string]Bounds{}
	maxPacket := Money(0)
	for i, k := range b.Kinds {
		where := fmt.Sprintf("kinds[%d]", i)
		if k.Name == "" {
			add("%s: name is empty", where)
			continue
		}
		if _, dup := kinds[k.Name]; dup {
			add("%s: kind %q defined twice", where, k.Name)
		}
		bd := b.kindBounds(k)
		switch {
		case bd.Min < 1:
			add("%s (%s): min per packet must be at least 0.01 (set packet.min or the kind's min)", where, k.Name)
		case bd.Max < bd.Min:
			add("%s (%s): max %s below min %s", where, k.Name, bd.Max, bd.Min)
		case bd.Max > MaxPacketAmount:
			add("%s (%s): max %s above the ticket's limit %s", where, k.Name, bd.Max, MaxPacketAmount)
		}
		maxPacket = max(maxPacket, bd.Max)
		kinds[k.Name] = bd
	}
	if b.KeyLimit < 2*maxPacket {
		add("key_limit %s must be at least twice the largest packet (%s)", b.KeyLimit, maxPacket)
	}
	merchants := map[string]Money{}
	for i, m := range b.Merchants {
		where := fmt.Sprintf("merchants[%d]", i)
		switch {
		case m.ID == "":
			add("%s: id is empty", where)
			continue
		case strings.ContainsAny(m.ID, ",\n\"") || strings.ContainsAny(m.Name, "\n"):
			add("%s (%s): id must not contain commas, quotes or newlines", where, m.ID)
		}
		if _, dup := merchants[m.ID]; dup {
			add("%s: merchant %q defined twice", where, m.ID)
		}
		if m.Funds <= 0 {
			add("%s (%s): funds must be positive", where, m.ID)
		}
		merchants[m.ID] = m.Funds
	}
	if len(b.Merchants) == 0 {
		add("merchants: at least one merchant is needed")
	}
	if len(b.Plans) == 0 {
		add("plans: at least one plan is needed")
	}
	planNames := map[string]bool{}
	for i, p := range b.Plans {
		where := fmt.Sprintf("plans[%d]", i)
		if p.Name == "" {
			add("%s: name is empty", where)
		} else if planNames[p.Name] {
			add("%s: plan %q defined twice", where, p.Name)
		}
		planNames[p.Name] = true
		where = fmt.Sprintf("plan %q", p.Name)
		funded := map[string]Money{} // kind → funding
		for mid, byKind := range p.Funding {
			funds, ok := merchants[mid]
			if !ok {
				add("%s: funding names unknown merchant %q", where, mid)
				continue
			}
			sum := Money(0)
			for k, amt := range byKind {
				if _, ok := kinds[k]; !ok {
					add("%s: merchant %q funds unknown kind %q", where, mid, k)
				}
				if amt <= 0 {
					add("%s: merchant %q funds kind %q with a non-positive amount", where, mid, k)
				}
				sum += amt
				funded[k] += amt
			}
			if sum > funds {
				add("%s: merchant %q commits %s but has only %s of funds", where, mid, sum, funds)
			}
		}
		if len(p.Slots) == 0 {
			add("%s: no slots", where)
		}
		slotIDs := map[uint32]bool{}
		handed := map[string]Money{}
		var packets uint64
		for j, s := range p.Slots {
			sw := fmt.Sprintf("%s slots[%d] (id %d)", where, j, s.ID)
			if s.ID == 0 {
				add("%s: slot id must be positive", sw)
			}
			if slotIDs[s.ID] {
				add("%s: slot id used twice", sw)
			}
			slotIDs[s.ID] = true
			if len(s.Cells) == 0 {
				add("%s: no cells", sw)
			}
			total := Money(0)
			for k, c := range s.Cells {
				bd, ok := kinds[k]
				if !ok {
					add("%s: unknown kind %q", sw, k)
					continue
				}
				cw := fmt.Sprintf("%s kind %s", sw, k)
				if c.Count == 0 || c.Amount <= 0 {
					add("%s: amount and count must be positive", cw)
					continue
				}
				if c.Count > MaxPackets {
					add("%s: count %d exceeds the ticket's packet id space", cw, c.Count)
					continue
				}
				if lo, ok := mulMoney(bd.Min, c.Count); !ok || c.Amount < lo {
					add("%s: %s is less than %d packets × min %s", cw, c.Amount, c.Count, bd.Min)
				}
				if hi, ok := mulMoney(bd.Max, c.Count); ok && c.Amount > hi {
					add("%s: %s is more than %d packets × max %s", cw, c.Amount, c.Count, bd.Max)
				}
				total += c.Amount
				handed[k] += c.Amount
				packets += c.Count
			}
			if s.Budget > 0 && total > s.Budget {
				add("%s: cells total %s, over the slot budget %s", sw, total, s.Budget)
			}
		}
		if packets > MaxPackets {
			add("%s: %d packets exceed the ticket's packet id space (%d)", where, packets, MaxPackets)
		}
		for _, k := range b.Kinds {
			if handed[k.Name] != funded[k.Name] {
				add("%s: kind %q: slots hand out %s but merchants fund %s", where, k.Name, handed[k.Name], funded[k.Name])
			}
		}
	}
	if len(errs) > 0 {
		sort.Strings(errs) // map iteration order must not reorder the report
		return fmt.Errorf("%w:\n  %s", ErrBadBudget, strings.Join(errs, "\n  "))
	}
	return nil
}

// mulMoney returns m×n and whether it fits in int64.
func mulMoney(m Money, n uint64) (Money, bool) {
	if m == 0 {
		return 0, true
	}
	if n > uint64(1<<62)/uint64(m) {
		return 0, false
	}
	return Money(uint64(m) * n), true
}
