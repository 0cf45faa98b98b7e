package auth

import (
	"testing"
	"time"
)

// TestGuardVerifyAllocs: docs/measurements.md's token verification row
// (pooled HMAC state): VerifyBytes allocates only the returned device id,
// and nothing for a token without one.
func TestGuardVerifyAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items")
	}
	ks := testSet(t)
	now := time.Now()
	for dev, want := range map[string]float64{"": 0, "device-123": 1} {
		tok, _ := ks.Mint(1, dev, now.Add(time.Hour))
		b := []byte(tok)
		if n := testing.AllocsPerRun(1000, func() {
			if _, err := ks.VerifyBytes(b, now); err != nil {
				panic(err)
			}
		}); n > want {
			t.Errorf("VerifyBytes with device %q allocates %v times, want at most %v", dev, n, want)
		}
	}
}
