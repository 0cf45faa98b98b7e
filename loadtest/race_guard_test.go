//go:build race

package loadtest

// raceEnabled: the race detector's shadow memory multiplies what memory guards measure.
const raceEnabled = true
