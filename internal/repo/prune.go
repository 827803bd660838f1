package repo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/autosnap/autosnap/internal/journal"
	"github.com/autosnap/autosnap/internal/retention"
)

// PrunePlan is what a prune of one guest will do. It is pure data: PlanPrune computes
// it without changing anything (a dry run prints it), Prune carries it out.
type PrunePlan struct {
	Guest  GuestID   `json:"guest"`
	Policy string    `json:"policy"`
	Now    time.Time `json:"now"`
	// Decisions cover every point of the guest, oldest first.
	Decisions []retention.GFSDecision `json:"decisions"`
	// Remove are the IDs of the points to remove, oldest first.
	Remove []string `json:"remove"`
	// Rebase are the kept files whose backing file is removed: each is rebased onto
	// its nearest kept ancestor (or made standalone) before anything is removed.
	Rebase []RebaseStep `json:"rebase,omitempty"`
	// Reparent gives the new Parent of each kept point whose parent is removed.
	Reparent map[string]string `json:"reparent,omitempty"`
	// Rechain maps a chain whose full is removed to its oldest kept point, which the
	// rebases make standalone: that point becomes the chain's full (level full, its
	// former level in Merged) and every kept point of the chain takes its ID as chain
	// name, so the chain goes on (an inc stacks on its newest point, a diff on the
	// new full) instead of needing a new full.
	Rechain map[string]string `json:"rechain,omitempty"`
}

// RebaseStep moves one kept image from a backing file that is removed to another.
type RebaseStep struct {
	Point string `json:"point"`
	Disk  string `json:"disk"`
	// From and To are backing names as written in the image header, relative to the
	// point directory; To "" makes the image standalone.
	From string `json:"from"`
	To   string `json:"to"`
}

// Kept returns the IDs of the points the plan keeps.
func (pl PrunePlan) Kept() []string {
	var out []string
	for _, d := range pl.Decisions {
		if d.Keep {
			out = append(out, d.ID)
		}
	}
	return out
}

// PlanPrune applies policy to the guest's points at now and plans how to remove the
// others so that every kept point restores exactly as before. It changes nothing.
func (g *Guest) PlanPrune(policy retention.GFS, now time.Time) (PrunePlan, error) {
	ps, err := g.Points()
	if err != nil {
		return PrunePlan{}, err
	}
	items := make([]retention.GFSItem, len(ps))
	for i, p := range ps {
		items[i] = retention.GFSItem{ID: p.ID, Time: p.Started}
	}
	ds, err := policy.Apply(items, now)
	if err != nil {
		return PrunePlan{}, fmt.Errorf("guest %s: %w", g.ID.Name, err)
	}
	pl := planRemoval(ps, ds)
	pl.Guest, pl.Policy, pl.Now = g.ID, policy.String(), now
	return pl, nil
}

// planRemoval plans removing the points ds does not keep: for every kept point whose
// parent or whose disk's backing file belongs to a removed point, the nearest kept
// ancestor (per disk, following the backing files) becomes its new parent or backing.
// A chain whose full is removed gets its oldest kept point as new full (Rechain); a
// kept point of that chain left without any kept ancestor (a diff on the removed
// full) is rebased onto the new full rather than made standalone: it holds every
// change since the old full, so the rebase writes next to nothing into it.
func planRemoval(ps []Point, ds []retention.GFSDecision) PrunePlan {
	byID := map[string]Point{}
	for _, p := range ps {
		byID[p.ID] = p
	}
	removed := map[string]bool{}
	pl := PrunePlan{Decisions: ds, Reparent: map[string]string{}, Rechain: map[string]string{}}
	for _, d := range ds {
		if !d.Keep {
			removed[d.ID] = true
			pl.Remove = append(pl.Remove, d.ID)
		}
	}
	for _, p := range ps { // oldest first: the first kept point of a chain is its new full
		if removed[p.ID] || p.Chain == "" || !removed[p.Chain] {
			continue
		}
		if _, done := pl.Rechain[p.Chain]; !done {
			pl.Rechain[p.Chain] = p.ID
		}
	}
	for _, p := range ps {
		if removed[p.ID] {
			continue
		}
		newFull, rechained := pl.Rechain[p.Chain]
		rechained = rechained && newFull != p.ID
		if removed[p.Parent] {
			np := p.Parent
			for np != "" && removed[np] {
				np = byID[np].Parent
			}
			if np == "" && rechained {
				np = newFull
			}
			pl.Reparent[p.ID] = np
		}
		for _, d := range p.Disks {
			bp, ok := backingPoint(d.Backing)
			if !ok || !removed[bp] {
				continue
			}
			to := d.Backing
			for {
				bp, ok := backingPoint(to)
				if !ok || !removed[bp] {
					break
				}
				bd, found := byID[bp].Disk(d.Name)
				if !found {
					to = ""
					break
				}
				to = bd.Backing
			}
			if to == "" && rechained {
				if fd, ok := byID[newFull].Disk(d.Name); ok && fd.VirtualSize == d.VirtualSize {
					to = backingName(newFull, fd.File)
				}
			}
			pl.Rebase = append(pl.Rebase, RebaseStep{Point: p.ID, Disk: d.Name, From: d.Backing, To: to})
		}
	}
	if len(pl.Reparent) == 0 {
		pl.Reparent = nil
	}
	if len(pl.Rechain) == 0 {
		pl.Rechain = nil
	}
	return pl
}

// pruneRecord is the journal record of a prune in progress.
type pruneRecord struct {
	Plan PrunePlan `json:"plan"`
}

const pruneKey = "prune"

func (g *Guest) journal() *journal.Store { return journal.Open(filepath.Join(g.Dir, JournalDir)) }

// Prune carries out plan: it journals the plan in the guest directory, rebases every
// dependant of a removed point onto its nearest kept ancestor with a safe `qemu-img
// rebase` (which writes into the dependant whatever the removed files provided, so
// the dependant reads exactly as before; an interrupted rebase leaves it unchanged on
// its old backing), rewrites the manifests of the points it changed (parent, backing,
// checksum, size), then removes the pruned points (each renamed to .removing-<ID>
// first) and drops the journal record. A run cut off anywhere is finished by Repair.
// The caller holds the guest's lock; the plan must match the guest's current points.
func (g *Guest) Prune(ctx context.Context, plan PrunePlan) error {
	if !heldExclusive(filepath.Join(g.Dir, LockFile)) {
		return fmt.Errorf("guest %s: Prune needs the guest's lock (Guest.Lock)", g.ID.Name)
	}
	var rec pruneRecord
	if ok, err := g.journal().Get(pruneKey, &rec); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("guest %s: an earlier prune was interrupted; run Repair (autosnap backup prune does) before pruning again", g.ID.Name)
	}
	ps, err := g.Points()
	if err != nil {
		return err
	}
	have := make([]string, len(ps))
	for i, p := range ps {
		have[i] = p.ID
	}
	planned := make([]string, len(plan.Decisions))
	for i, d := range plan.Decisions {
		planned[i] = d.ID
	}
	slices.Sort(have)
	slices.Sort(planned)
	if !slices.Equal(have, planned) {
		return fmt.Errorf("guest %s: the points changed since the prune was planned; plan again", g.ID.Name)
	}
	if len(plan.Kept()) == 0 && len(plan.Decisions) > 0 {
		return fmt.Errorf("guest %s: %w: refusing a plan that removes every point", g.ID.Name, retention.ErrKeepsNothing)
	}
	if len(plan.Remove) == 0 {
		return nil
	}
	unlockReaders, err := g.lockReaders(ctx)
	if err != nil {
		return err
	}
	defer unlockReaders()
	if err := g.journal().Put(pruneKey, pruneRecord{Plan: plan}); err != nil {
		return fmt.Errorf("guest %s: journalling the prune: %w", g.ID.Name, err)
	}
	hit(PointPruneJournaled)
	return g.runPrune(ctx, plan)
}

// runPrune does (or finishes) the journalled plan; every step is idempotent.
func (g *Guest) runPrune(ctx context.Context, plan PrunePlan) error {
	changed := map[string]map[string]bool{} // point → rebased disks
	for _, st := range plan.Rebase {
		file := filepath.Join(g.Dir, st.Point, st.Disk+".qcow2")
		info, err := imageInfo(ctx, file)
		if err != nil {
			return fmt.Errorf("guest %s: prune: %w", g.ID.Name, err)
		}
		if changed[st.Point] == nil {
			changed[st.Point] = map[string]bool{}
		}
		changed[st.Point][st.Disk] = true
		switch info.BackingFilename {
		case st.To:
			continue
		case st.From:
		default:
			return fmt.Errorf("guest %s: prune: %s has backing file %q, expected %q or %q; the repository was changed by hand: check it with backup verify", g.ID.Name, file, info.BackingFilename, st.From, st.To)
		}
		args := []string{"rebase", "-f", "qcow2", "-t", "writethrough", "-b", st.To}
		if st.To != "" {
			args = append(args, "-F", "qcow2")
		}
		if _, err := qemuImg(ctx, append(args, file)...); err != nil {
			return fmt.Errorf("guest %s: prune: merging the data of the removed points into %s: %w", g.ID.Name, file, err)
		}
		hit(PointPruneRebased)
	}
	for id := range plan.Reparent {
		if changed[id] == nil {
			changed[id] = map[string]bool{}
		}
	}
	if len(plan.Rechain) > 0 {
		ps, err := g.Points()
		if err != nil {
			return err
		}
		for _, p := range ps {
			if _, ok := plan.Rechain[p.Chain]; ok && changed[p.ID] == nil {
				changed[p.ID] = map[string]bool{}
			}
		}
	}
	ids := make([]string, 0, len(changed))
	for id := range changed {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if err := g.rewriteManifest(ctx, id, plan, changed[id]); err != nil {
			return err
		}
	}
	hit(PointPruneManifests)
	for _, id := range plan.Remove {
		dir := filepath.Join(g.Dir, id)
		gone := filepath.Join(g.Dir, RemovingPfx+id)
		if err := os.Rename(dir, gone); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("guest %s: prune: removing point %s: %w", g.ID.Name, id, err)
		}
		if err := syncDir(g.Dir); err != nil {
			return err
		}
		hit(PointPruneRemoving)
		if err := os.RemoveAll(gone); err != nil {
			return fmt.Errorf("guest %s: prune: removing point %s: %w", g.ID.Name, id, err)
		}
	}
	if err := syncDir(g.Dir); err != nil {
		return err
	}
	return g.journal().Delete(pruneKey)
}

// rewriteManifest records point id's new parent and the new backing files, checksums
// and sizes of its rebased disks.
func (g *Guest) rewriteManifest(ctx context.Context, id string, plan PrunePlan, disks map[string]bool) error {
	p, err := readPoint(filepath.Join(g.Dir, id))
	if err != nil {
		return fmt.Errorf("guest %s: prune: %w", g.ID.Name, err)
	}
	m := p.Manifest
	if np, ok := plan.Reparent[id]; ok {
		m.Parent = np
	}
	if root, ok := plan.Rechain[m.Chain]; ok {
		if root == m.ID && m.Level != LevelFull {
			m.Merged = fmt.Sprintf("taken as %s; the prune removing the full %s merged the data of the points it stood on into it", m.Level, m.Chain)
			m.Level = LevelFull
		}
		m.Chain = root
	}
	var redo []DiskManifest
	for i, d := range m.Disks {
		if !disks[d.Name] {
			continue
		}
		info, err := imageInfo(ctx, p.Path(d))
		if err != nil {
			return fmt.Errorf("guest %s: prune: %w", g.ID.Name, err)
		}
		m.Disks[i].Backing = info.BackingFilename
		redo = append(redo, m.Disks[i])
	}
	if err := fillSums(ctx, p.Dir, redo); err != nil {
		return fmt.Errorf("guest %s: prune: point %s: %w", g.ID.Name, id, err)
	}
	for _, r := range redo {
		for i := range m.Disks {
			if m.Disks[i].Name == r.Name {
				m.Disks[i] = r
			}
		}
	}
	if err := writeJSONAtomic(filepath.Join(p.Dir, ManifestFile), m); err != nil {
		return fmt.Errorf("guest %s: prune: point %s: %w", g.ID.Name, id, err)
	}
	return nil
}

// Repair brings the guest directory back to a consistent state after a run that was
// cut off: it finishes a journalled prune, removes points that were being written
// (.partial-*) or removed (.removing-*) and temporary files, and says what it did.
// The caller holds the guest's lock.
func (g *Guest) Repair(ctx context.Context) ([]string, error) {
	if !heldExclusive(filepath.Join(g.Dir, LockFile)) {
		return nil, fmt.Errorf("guest %s: Repair needs the guest's lock (Guest.Lock)", g.ID.Name)
	}
	var did []string
	ents, err := os.ReadDir(g.Dir)
	if err != nil {
		return nil, fmt.Errorf("guest %s: %w", g.ID.Name, err)
	}
	for _, e := range ents {
		n := e.Name()
		path := filepath.Join(g.Dir, n)
		switch {
		case strings.HasPrefix(n, PartialPfx):
			if err := os.RemoveAll(path); err != nil {
				return did, fmt.Errorf("guest %s: removing the unfinished point %s: %w", g.ID.Name, path, err)
			}
			did = append(did, fmt.Sprintf("removed the unfinished point %s (a backup was interrupted)", strings.TrimPrefix(n, PartialPfx)))
		case strings.HasPrefix(n, RemovingPfx):
			if err := os.RemoveAll(path); err != nil {
				return did, fmt.Errorf("guest %s: removing %s: %w", g.ID.Name, path, err)
			}
			did = append(did, fmt.Sprintf("finished removing the pruned point %s", strings.TrimPrefix(n, RemovingPfx)))
		case strings.HasPrefix(n, ".tmp-"):
			// guest.json is rewritten without the guest's lock (Repo.Guest): only a
			// temporary file old enough to be abandoned is removed.
			if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > 10*time.Minute {
				_ = os.Remove(path)
			}
		case e.IsDir() && ValidID(n):
			tmps, _ := filepath.Glob(filepath.Join(path, ".tmp-*"))
			for _, t := range tmps {
				_ = os.Remove(t)
			}
		}
	}
	var rec pruneRecord
	ok, err := g.journal().Get(pruneKey, &rec)
	if err != nil {
		return did, fmt.Errorf("guest %s: %w", g.ID.Name, err)
	}
	if ok {
		unlockReaders, err := g.lockReaders(ctx)
		if err != nil {
			return did, err
		}
		err = g.runPrune(ctx, rec.Plan)
		unlockReaders()
		if err != nil {
			return did, fmt.Errorf("guest %s: finishing the interrupted prune: %w", g.ID.Name, err)
		}
		did = append(did, fmt.Sprintf("finished the interrupted prune (%s): removed %s", rec.Plan.Policy, strings.Join(rec.Plan.Remove, ", ")))
	}
	if len(did) > 0 {
		if err := syncDir(g.Dir); err != nil {
			return did, err
		}
	}
	return did, nil
}

// Leftovers says what Repair would do, without doing it (for a dry run).
func (g *Guest) Leftovers() ([]string, error) {
	var out []string
	ents, err := os.ReadDir(g.Dir)
	if err != nil {
		return nil, fmt.Errorf("guest %s: %w", g.ID.Name, err)
	}
	for _, e := range ents {
		n := e.Name()
		switch {
		case strings.HasPrefix(n, PartialPfx):
			out = append(out, fmt.Sprintf("would remove the unfinished point %s", strings.TrimPrefix(n, PartialPfx)))
		case strings.HasPrefix(n, RemovingPfx):
			out = append(out, fmt.Sprintf("would finish removing the pruned point %s", strings.TrimPrefix(n, RemovingPfx)))
		}
	}
	var rec pruneRecord
	ok, err := g.journal().Get(pruneKey, &rec)
	if err != nil {
		return out, fmt.Errorf("guest %s: %w", g.ID.Name, err)
	}
	if ok {
		out = append(out, fmt.Sprintf("would first finish the interrupted prune (%s) removing %s", rec.Plan.Policy, strings.Join(rec.Plan.Remove, ", ")))
	}
	return out, nil
}
