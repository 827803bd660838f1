package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/autosnap/autosnap/internal/backup"
	"github.com/autosnap/autosnap/internal/crash"
	"github.com/autosnap/autosnap/internal/driver"
)

// An interrupted restore --instant (the process killed while the disks were moved)
// leaves the new guest running on its overlays DIR/.NAME-<disk>.qcow2.instant, with
// the block copies possibly still running in QEMU. Running the same restore command
// again finds the guest and finishes the move: copies still running are adopted,
// disks already switched over are kept, a copy QEMU no longer runs is started again,
// and the overlays are removed at the end.

// instantOverlay is the overlay file restore --instant runs disk f on.
func instantOverlay(f backup.RestoreFile) string {
	return filepath.Join(filepath.Dir(f.Out), "."+filepath.Base(f.Out)+".instant")
}

// interruptedInstant returns the guest named name when one exists (ok), for the
// caller to resume; a name that is free gives ok false.
func interruptedInstant(ctx context.Context, def driver.GuestDefiner, name string) (driver.Guest, bool, error) {
	d, ok := def.(driver.Driver)
	if !ok {
		return driver.Guest{}, false, nil
	}
	gs, err := d.Guests(ctx)
	if err != nil {
		return driver.Guest{}, false, err
	}
	for _, g := range gs {
		if g.Name == name {
			return g, true, nil
		}
	}
	return driver.Guest{}, false, nil
}

// resumeInstant finishes an interrupted restore --instant of guest ng. It refuses a
// guest that is not one: a disk running neither on its overlay nor on its final image.
func resumeInstant(ctx context.Context, g *GlobalOptions, def driver.GuestDefiner, ng driver.Guest, files []backup.RestoreFile) error {
	ds, ok := def.(driver.DiskStater)
	if !ok {
		return fmt.Errorf("a guest named %s already exists; choose another --define name", ng.Name)
	}
	sts, err := ds.DiskStates(ctx, ng)
	if err != nil {
		return err
	}
	moves, final := map[string]string{}, true
	for _, f := range files {
		st, ov := sts[f.Disk], instantOverlay(f)
		if st.Source != ov && st.Source != f.Out {
			return usage(fmt.Errorf("a guest named %s already exists and its disk %s runs on %q, not on an instant restore's overlay %s: it is not an interrupted restore --instant; choose another --define name", ng.Name, f.Disk, st.Source, ov))
		}
		if st.Source == ov && st.Mirror == "" {
			// The copy died with its job (or never started): a partial image of ours
			// that a new copy replaces.
			if err := os.Remove(f.Out); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("removing the partial copy %s: %w", f.Out, err)
			}
		}
		moves[f.Disk] = f.Out
		final = final && st.Source == f.Out
	}
	running := ng.State == driver.StateRunning || ng.State == driver.StatePaused
	if !running && final {
		// Shut off, so its definition is what DiskStates read: already standalone.
		return removeOverlays(ng, moves)
	}
	if !running {
		return fmt.Errorf("guest %s of an interrupted restore --instant is %s on its overlays in %s: start it (virsh start %s) and run the same restore again to finish the move",
			ng.Name, ng.State, filepath.Dir(files[0].Out), ng.Name)
	}
	fmt.Fprintf(g.stdout, "Guest %s exists from an interrupted restore --instant: finishing the move of its disks\n", ng.Name)
	if err := moveInstant(ctx, g, def, ng, moves); err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "Guest %s no longer depends on the repository\n", ng.Name)
	return nil
}

// moveInstant moves the guest's disks to their final images with progress, then
// removes the overlays.
func moveInstant(ctx context.Context, g *GlobalOptions, def driver.GuestDefiner, ng driver.Guest, moves map[string]string) error {
	pr := pickProgress("auto", g.stdout)
	bar := pr.Bar(ng.Name + " move")
	var once sync.Once
	err := def.MoveDisks(ctx, ng, moves, func(done, total uint64) {
		once.Do(func() { crash.Point(backup.CrashInstantCopying) })
		bar.Update(done, total)
	})
	bar.Done(err == nil)
	pr.Wait()
	if err != nil {
		return err
	}
	crash.Point(backup.CrashInstantMoved)
	return removeOverlays(ng, moves)
}

// removeOverlays removes the overlays of the moved disks.
func removeOverlays(ng driver.Guest, moves map[string]string) error {
	for _, out := range moves {
		ov := filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+".instant")
		if err := os.Remove(ov); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("guest %s no longer uses %s, but removing it failed: %w", ng.Name, ov, err)
		}
	}
	return nil
}
