package push

import "testing"

// TestGuardCoalescerAndRegistryZeroAllocs: docs/measurements.md and
// docs/push.md give the coalescer (AddDeliver, Add) and the registry lookup
// as 0 allocs once the tables have grown; this pins it independently of
// the machine.
func TestGuardCoalescerAndRegistryZeroAllocs(t *testing.T) {
	c := NewCoalescer()
	payload := []byte("0123456789abcdef")
	const users = 1000
	msgs := routerMessages(t, users, payload)
	window := func() {
		for m := range msgs {
			c.AddDeliver(&msgs[m])
		}
		for i := range uint64(users) {
			c.Add(i, nil, uint32(i&3), 2, payload, 1)
		}
		c.Recycle(c.Take())
	}
	window()
	window() // both batches' tables grown
	if n := testing.AllocsPerRun(50, window); n != 0 {
		t.Errorf("a coalescer window (%d router messages, %d adds) allocates %v times, want 0", len(msgs), users, n)
	}

	r := NewRegistry()
	for i := range uint64(1 << 12) {
		r.Add(i, uint16(i%60), 1)
	}
	var dst [4]uint16
	i := uint64(0)
	if n := testing.AllocsPerRun(1000, func() { i++; r.Lookup(i&(1<<12-1), dst[:0]) }); n != 0 {
		t.Errorf("Registry.Lookup allocates %v times, want 0", n)
	}
}
