package fleet

import (
	"math"
	"math/rand/v2"
	"slices"
)

// MaxNodes is the most nodes a list carries.
const MaxNodes = 5

// DefaultCapacity is the connections per host a weight assumes when a host
// announces no connection limit.
const DefaultCapacity = 20000

// Weight is h's spare capacity, 1..1000 (higher = less loaded): connections
// against the host's limit (or capacity), CPU, and a halving for each
// admission and degrade level.
func Weight(h *Host, capacity int) uint32 {
	if capacity <= 0 {
		capacity = DefaultCapacity
	}
	if h.MaxConns > 0 {
		capacity = h.MaxConns
	}
	free := 1 - float64(h.Conns)/float64(capacity)
	free = min(free, 1-h.CPU)
	w := 1000 * max(free, 0)
	w /= math.Pow(2, float64(h.Admission+h.Degrade))
	return uint32(min(max(w, 1), 1000))
}

// tier is how near h is to p: 0 same region and carrier, 1 same region,
// 2 elsewhere.
func tier(h *Host, p Place) int {
	switch {
	case p.Region != "" && h.Region == p.Region && (p.Carrier == "" || h.Carrier == p.Carrier):
		return 0
	case p.Region != "" && h.Region == p.Region:
		return 1
	}
	return 2
}

// Candidate is a host chosen for a list, with its weight.
type Candidate struct {
	Host   *Host
	Weight uint32
	tier   int
}

// Select chooses up to n usable hosts for a client at p, except the host
// exclude: nearest tier first (same region and carrier, then same region,
// then the others), least loaded (highest weight) first within a tier.
// Draining and evacuating hosts are never chosen; hosts that left the view
// are not in hosts.
func Select(hosts []Host, p Place, exclude string, n, capacity int) []Candidate {
	cs := candidates(hosts, p, exclude, capacity)
	slices.SortStableFunc(cs, func(a, b Candidate) int {
		if a.tier != b.tier {
			return a.tier - b.tier
		}
		return int(b.Weight) - int(a.Weight)
	})
	return cs[:min(n, len(cs))]
}

// SelectRandom is Select with a weighted random order within each tier (a
// host twice as free is twice as likely to come first): variants of a
// list spread a region's clients over its hosts in proportion to their
// spare capacity instead of sending them all to the single least loaded.
func SelectRandom(hosts []Host, p Place, exclude string, n, capacity int, rng *rand.Rand) []Candidate {
	cs := candidates(hosts, p, exclude, capacity)
	key := make([]float64, len(cs))
	for i, c := range cs {
		// Efraimidis-Spirakis: sorting by u^(1/w) is weighted sampling
		// without replacement.
		key[i] = math.Pow(rng.Float64(), 1/float64(c.Weight))
	}
	idx := make([]int, len(cs))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		if cs[a].tier != cs[b].tier {
			return cs[a].tier - cs[b].tier
		}
		switch {
		case key[a] > key[b]:
			return -1
		case key[a] < key[b]:
			return 1
		}
		return 0
	})
	out := make([]Candidate, 0, min(n, len(cs)))
	for _, i := range idx[:min(n, len(idx))] {
		out = append(out, cs[i])
	}
	return out
}

func candidates(hosts []Host, p Place, exclude string, capacity int) []Candidate {
	cs := make([]Candidate, 0, len(hosts))
	for i := range hosts {
		h := &hosts[i]
		if h.ID == exclude || !h.Usable() {
			continue
		}
		cs = append(cs, Candidate{Host: h, Weight: Weight(h, capacity), tier: tier(h, p)})
	}
	return cs
}
