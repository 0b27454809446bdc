//go:build race

package e2e

// raceEnabled builds the daemons with the race detector when the tests run
// with it, so `make test` races the real processes and `make bench` measures
// them without its overhead.
const raceEnabled = true
