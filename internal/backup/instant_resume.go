package backup

import (
	"path/filepath"

	"github.com/autosnap/autosnap/internal/repo"
)

// Crash points of restore --instant (see internal/crash).
const (
	// CrashInstantCopying: the guest runs on its overlays and the block copies run
	// (their first progress report).
	CrashInstantCopying = "restore.instant-copying"
	// CrashInstantMoved: the guest uses its final images and its definition names
	// them; the overlays are not yet removed.
	CrashInstantMoved = "restore.instant-moved"
)

// PlanInstantResume lists the files of an interrupted restore --instant that a rerun
// finishes: PlanRestore's names (qcow2, prefix NAME-), which exist already.
func PlanInstantResume(p repo.Point, disks []string, dir, prefix string) ([]RestoreFile, error) {
	files, err := PlanRestore(p, disks, filepath.Join(dir, "\x00absent"), prefix, "qcow2")
	if err != nil {
		return nil, err
	}
	for i := range files {
		files[i].Out = filepath.Join(dir, filepath.Base(files[i].Out))
	}
	return files, nil
}
