package engine

import (
	"context"
	"sync/atomic"
	"testing"
)

// prefetching is the fake driver with a merge prefetch that counts its calls.
type prefetching struct {
	*fakeDriver
	calls *atomic.Int32
}

func (p prefetching) PrefetchMergeScan(context.Context) { p.calls.Add(1) }

// TestSnapPrefetchesMerges: a snap whose plan removes snapshots lets the driver
// prepare its merges ahead (before the creates); one that removes nothing, and a dry
// run, do not.
func TestSnapPrefetchesMerges(t *testing.T) {
	h := newHarness(t, running("a"), running("b"))
	var calls atomic.Int32
	run := func(keep int, dry bool) int32 {
		t.Helper()
		calls.Store(0)
		j := h.job("hourly", keep)
		j.Driver = prefetching{h.f, &calls}
		j.DryRun = dry
		if _, err := h.snap(j); err != nil {
			t.Fatal(err)
		}
		return calls.Load()
	}
	if n := run(2, false); n != 0 {
		t.Errorf("first snap (nothing to remove): %d prefetches, want 0", n)
	}
	if n := run(2, false); n != 0 {
		t.Errorf("second snap with keep 2 (nothing to remove): %d prefetches, want 0", n)
	}
	if n := run(2, true); n != 0 {
		t.Errorf("dry run that would remove: %d prefetches, want 0", n)
	}
	if n := run(2, false); n != 2 {
		t.Errorf("snap removing one snapshot per guest: %d prefetches, want one per guest (the driver runs the first)", n)
	}
}
