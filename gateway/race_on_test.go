//go:build race

package gateway

// raceEnabled: sync.Pool drops items at random under the race detector, so
// allocation counts of pooled paths are only checked without it.
const raceEnabled = true
