//go:build race

package daemon_test

// raceSlowdown scales the performance tests' time bounds: the race detector makes
// this code five to ten times slower (make test runs with -race).
const raceSlowdown = 10
