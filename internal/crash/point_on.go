//go:build crashtest

package crash

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Enabled reports whether this binary was built with crash points.
const Enabled = true

var (
	mu   sync.Mutex
	hits = map[string]int{}
)

// Point stops the process at the point named by AUTOSNAP_CRASH_AT ("name" or
// "name#N" for the N-th time the point is reached, default 1st).
//
// It first writes the point's name to the file AUTOSNAP_CRASH_FILE (when set) so the
// test knows the point was reached. Then, with AUTOSNAP_CRASH_MODE:
//
//	kill  (default) the process SIGKILLs itself: nothing runs after the point.
//	pause the process waits until the test removes AUTOSNAP_CRASH_FILE (e.g. after
//	      restarting libvirtd), then carries on.
func Point(name string) {
	want := os.Getenv("AUTOSNAP_CRASH_AT")
	if want == "" {
		return
	}
	wantName, nth := want, 1
	if i := strings.LastIndexByte(want, '#'); i >= 0 {
		wantName = want[:i]
		if n, err := strconv.Atoi(want[i+1:]); err == nil && n > 0 {
			nth = n
		}
	}
	if wantName != name {
		return
	}
	mu.Lock()
	hits[name]++
	n := hits[name]
	mu.Unlock()
	if n != nth {
		return
	}
	file := os.Getenv("AUTOSNAP_CRASH_FILE")
	if file != "" {
		_ = os.WriteFile(file, []byte(name+"\n"), 0o600)
	}
	if os.Getenv("AUTOSNAP_CRASH_MODE") == "pause" && file != "" {
		for {
			if _, err := os.Stat(file); err != nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // never continue past the point
}

// CommitBandwidth is the bandwidth in MiB/s live block commits start with:
// AUTOSNAP_CRASH_COMMIT_MIBPS when set, else 0 (no limit). The crash matrix starts the
// commits it interrupts slowly so that they are still in flight when it looks, however
// fast the machine copies; the shipped binary always passes 0.
func CommitBandwidth() uint64 {
	n, _ := strconv.ParseUint(os.Getenv("AUTOSNAP_CRASH_COMMIT_MIBPS"), 10, 64)
	return n
}
