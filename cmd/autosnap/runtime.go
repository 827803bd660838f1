package main

import (
	"os"
	"runtime"
	"runtime/debug"
)

// autosnap spends its time waiting for the hypervisor; its own work is small. A second
// P costs more than it gives there: every answer from libvirtd readies a goroutine,
// which wakes the idle P to spin for work, and the GC's idle mark workers fill that P
// too. With one P and a larger GC target, `status` over 200 guests x 20 snapshots
// (bench/status.sh) takes ~0.24 s of CPU instead of ~0.35 s, in the same wall time.
// GOMAXPROCS and GOGC in the environment still decide when set.
func init() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
}
