package engine

import (
	"context"
	"fmt"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/retention"
)

// chainOK applies --max-chain-depth to each disk's chain as it will be after this
// run: the new snapshot adds one overlay per disk and every planned removal of an
// external snapshot merges one away. The chain is one overlay deeper for the moment
// between the create and the removals.
func (j *Job) chainOK(ctx context.Context, gr *guestRun, l listing, ds []retention.Decision) bool {
	cr, ok := j.Driver.(driver.ChainReporter)
	if j.MaxChainDepth <= 0 || !ok {
		return true
	}
	g := gr.res.Guest
	cctx, cancel := j.opCtx(ctx)
	defer cancel()
	chains, err := cr.Chains(cctx, g)
	if err != nil {
		gr.fail("chain check failed", fmt.Errorf("guest %s: reading backing chains: %w", g.Name, err))
		return false
	}
	for _, c := range chains {
		overlays := len(c.Images) - 1
		after := overlays + 1 - mergedAway(l, ds, c.Disk)
		if after > j.MaxChainDepth {
			gr.fail("chain too deep", fmt.Errorf("guest %s: disk %s has %d overlays, %d after this snapshot and retention: above --max-chain-depth %d: lower --keep, remove snapshots or run `autosnap snapshot chain collapse`", g.Name, c.Disk, overlays, after, j.MaxChainDepth))
			return false
		}
	}
	return true
}

// mergedAway counts the planned removals that take one overlay off disk: external
// snapshots of it (a snapshot whose disks are not listed counts as external on all).
func mergedAway(l listing, ds []retention.Decision, disk string) int {
	n := 0
	for _, d := range ds {
		if d.Keep {
			continue
		}
		s, ok := l.byName(d.Name)
		if !ok {
			continue
		}
		if len(s.Disks) == 0 {
			if s.Location != driver.LocationInternal {
				n++
			}
			continue
		}
		for _, sd := range s.Disks {
			if sd.Name == disk && sd.Snapshot == "external" {
				n++
			}
		}
	}
	return n
}

// storageOK applies --max-perc-storage. A guest whose storage is too full fails.
func (j *Job) storageOK(ctx context.Context, gr *guestRun) bool {
	if j.MaxPercStorage <= 0 {
		return true
	}
	sr, ok := j.Driver.(driver.StorageReporter)
	if !ok {
		return true
	}
	sctx, cancel := j.opCtx(ctx)
	defer cancel()
	us, err := sr.Storage(sctx, gr.res.Guest)
	if err != nil {
		gr.fail("storage check failed", fmt.Errorf("guest %s: checking storage: %w", gr.res.Guest.Name, err))
		return false
	}
	for _, u := range us {
		if u.Capacity == 0 {
			continue // unknown size: cannot judge, do not block
		}
		if u.Percent > j.MaxPercStorage {
			gr.fail("storage full", fmt.Errorf("guest %s: skipped: storage %s is %.1f%% full, above --max-perc-storage %g%%: free space or raise the limit", gr.res.Guest.Name, u.Name, u.Percent, j.MaxPercStorage))
			return false
		}
	}
	return true
}
