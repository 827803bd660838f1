package engine

import (
	"context"
	"fmt"

	"github.com/autosnap/autosnap/internal/driver"
)

// chainOK applies --max-chain-depth: the new snapshot adds one overlay per disk.
func (j *Job) chainOK(ctx context.Context, gr *guestRun) bool {
	cr, ok := j.Driver.(driver.ChainReporter)
	if j.MaxChainDepth <= 0 || !ok {
		return true
	}
	cctx, cancel := j.opCtx(ctx)
	defer cancel()
	chains, err := cr.Chains(cctx, gr.res.Guest)
	if err != nil {
		gr.fail("chain check failed", fmt.Errorf("guest %s: reading backing chains: %w", gr.res.Guest.Name, err))
		return false
	}
	for _, c := range chains {
		if overlays := len(c.Images) - 1; overlays+1 > j.MaxChainDepth {
			gr.fail("chain too deep", fmt.Errorf("guest %s: disk %s already has %d overlays; another snapshot would exceed --max-chain-depth %d: remove snapshots or run `autosnap snapshot chain collapse`", gr.res.Guest.Name, c.Disk, overlays, j.MaxChainDepth))
			return false
		}
	}
	return true
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
