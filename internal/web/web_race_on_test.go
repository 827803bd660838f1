//go:build race

package web

// raceSlowdown scales the performance tests' time bounds: the race detector makes
// this code five to ten times slower (make test runs with -race).
const raceSlowdown = 10
