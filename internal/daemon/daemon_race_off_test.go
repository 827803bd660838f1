//go:build !race

package daemon_test

// raceSlowdown scales the performance tests' time bounds (1 without -race).
const raceSlowdown = 1
