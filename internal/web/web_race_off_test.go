//go:build !race

package web

// raceSlowdown scales the performance tests' time bounds (1 without -race).
const raceSlowdown = 1
