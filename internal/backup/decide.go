package backup

import (
	"fmt"
	"slices"
	"strings"

	"github.com/autosnap/autosnap/internal/driver"
)

// Level is the --level of a backup run: one of driver's levels or LevelAuto.
type Level string

// LevelAuto takes an inc when the guest has a usable chain in the repository and a full
// otherwise, saying why.
const LevelAuto Level = "auto"

// ParseLevel parses a --level value.
func ParseLevel(s string) (Level, error) {
	switch l := Level(strings.ToLower(s)); l {
	case LevelAuto, Level(driver.LevelFull), Level(driver.LevelInc), Level(driver.LevelDiff), Level(driver.LevelCopy):
		return l, nil
	}
	return "", fmt.Errorf("--level %q: use auto, full, inc, diff or copy", s)
}

// PointInfo is what the level decision needs to know of one complete point.
type PointInfo struct {
	ID         string
	Level      driver.BackupLevel
	Chain      string // the ID of the chain's full; empty for a copy
	Checkpoint string
	Disks      []DiskInfo
}

// DiskInfo is one disk of a point.
type DiskInfo struct {
	Name        string
	VirtualSize uint64
}

// Decision is the level a backup takes and what it stacks on.
type Decision struct {
	Level driver.BackupLevel
	// Parent is the point an inc or diff stacks on (its files are the backing files);
	// empty for a full or a copy.
	Parent string
	// Chain is the chain the new point joins: the full's ID; empty for a new full (it
	// starts its own chain) and for a copy.
	Chain string
	// Since is the checkpoint whose changes an inc or diff copies.
	Since string
	// Reason says why a full is taken (or, for an explicit inc or diff, why it cannot
	// be); empty when the level is what was asked for without a question.
	Reason string
	// DiskFull, for an inc or diff, names the disks copied whole inside it, each with
	// the reason (added since the parent, resized, not tracked by the checkpoint, a
	// disk that cannot track changes such as a raw image).
	DiskFull map[string]string
}

// ErrLevelImpossible marks an explicit --level inc or diff that the repository and the
// guest cannot give; the error says why.
var ErrLevelImpossible = fmt.Errorf("level not possible")

// Decide picks the level of the next backup of a guest from the asked level, the
// guest's complete points in the repository (oldest first), the guest's checkpoints
// (ours only, from BackupSource) and the disks selected for this backup.
//
// auto is an inc when the newest chain can be continued and a full otherwise, with the
// reason: no point yet, or the checkpoint the next inc needs is gone or unusable. An
// explicit inc or diff fails with that same reason (wrapping ErrLevelImpossible)
// instead of silently taking a full. Within an inc or diff, a disk whose changes cannot
// be read (added or resized since the parent, not tracked by the checkpoint, a raw
// image) is copied whole, with its reason in DiskFull; when that is every disk, the
// point is a full instead (auto) or the level is refused (explicit inc or diff). A diff stacks on the chain's full and copies changes since the full's
// checkpoint; an inc stacks on the chain's newest point. A copy starts no chain and
// needs nothing.
func Decide(want Level, points []PointInfo, checkpoints []driver.Checkpoint, disks []driver.BackupDisk) (Decision, error) {
	switch want {
	case Level(driver.LevelCopy):
		return Decision{Level: driver.LevelCopy}, nil
	case Level(driver.LevelFull):
		return Decision{Level: driver.LevelFull, Reason: "--level full"}, nil
	case LevelAuto, Level(driver.LevelInc), Level(driver.LevelDiff):
	default:
		return Decision{}, fmt.Errorf("unknown level %q", want)
	}
	level := driver.LevelInc
	if want == Level(driver.LevelDiff) {
		level = driver.LevelDiff
	}
	base, full, why := chainBase(level, points)
	var diskFull map[string]string
	if why == "" {
		var cp driver.Checkpoint
		if cp, why = usable(base, checkpoints); why == "" {
			diskFull = wholeDisks(base, cp, disks)
			if len(diskFull) == len(disks) {
				why = allWhole(diskFull, disks)
			}
		}
	}
	if why != "" {
		if want != LevelAuto {
			return Decision{}, fmt.Errorf("%w: cannot take %s: %s; take a full with --level full (or let --level auto decide)", ErrLevelImpossible, article(level), why)
		}
		return Decision{Level: driver.LevelFull, Reason: why}, nil
	}
	return Decision{Level: level, Parent: base.ID, Chain: full.ID, Since: base.Checkpoint, DiskFull: diskFull}, nil
}

// allWhole says that no disk can be copied incrementally, with each disk's reason.
func allWhole(whole map[string]string, disks []driver.BackupDisk) string {
	var parts []string
	for _, d := range disks {
		parts = append(parts, whole[d.Name])
	}
	return "no disk can be copied incrementally: " + strings.Join(parts, "; ")
}

// chainBase finds the point the next inc or diff stacks on: the newest point of the
// newest chain (inc) or that chain's full (diff).
func chainBase(level driver.BackupLevel, points []PointInfo) (base, full PointInfo, why string) {
	last := -1
	for i := len(points) - 1; i >= 0; i-- {
		if points[i].Level != driver.LevelCopy {
			last = i
			break
		}
	}
	if last < 0 {
		if len(points) > 0 {
			return base, full, "the repository holds only copies of this guest, no chain to continue"
		}
		return base, full, "no backup of this guest in the repository yet"
	}
	chain := points[last].Chain
	if points[last].Level == driver.LevelFull && chain == "" {
		chain = points[last].ID
	}
	// A chain's full is the full it is named after, or (once a prune removed that
	// full) the full the repository made of its oldest remaining point.
	fi := slices.IndexFunc(points, func(p PointInfo) bool { return p.Level == driver.LevelFull && (p.ID == chain || p.Chain == chain) })
	if fi < 0 {
		return base, full, fmt.Sprintf("the full %s that starts the newest chain (of point %s) is not in the repository", chain, points[last].ID)
	}
	full = points[fi]
	if level == driver.LevelDiff {
		return full, full, ""
	}
	return points[last], full, ""
}

// usable says why changes since base's checkpoint cannot be read on the guest at all,
// or returns the checkpoint.
func usable(base PointInfo, checkpoints []driver.Checkpoint) (driver.Checkpoint, string) {
	if base.Checkpoint == "" {
		return driver.Checkpoint{}, fmt.Sprintf("point %s has no checkpoint to continue from", base.ID)
	}
	ci := slices.IndexFunc(checkpoints, func(c driver.Checkpoint) bool { return c.Name == base.Checkpoint })
	if ci < 0 {
		return driver.Checkpoint{}, fmt.Sprintf("checkpoint %s of point %s is gone from the guest (removed, or the guest was redefined or restored)", base.Checkpoint, base.ID)
	}
	cp := checkpoints[ci]
	if cp.Unusable != "" {
		return cp, fmt.Sprintf("checkpoint %s of point %s cannot be used: %s", cp.Name, base.ID, cp.Unusable)
	}
	return cp, ""
}

// wholeDisks are the disks an inc or diff on base must copy whole, with the reason.
func wholeDisks(base PointInfo, cp driver.Checkpoint, disks []driver.BackupDisk) map[string]string {
	had := map[string]uint64{}
	for _, d := range base.Disks {
		had[d.Name] = d.VirtualSize
	}
	whole := map[string]string{}
	for _, d := range disks {
		size, ok := had[d.Name]
		switch {
		case !ok:
			whole[d.Name] = fmt.Sprintf("disk %s was added since point %s", d.Name, base.ID)
		case size != d.VirtualSize:
			whole[d.Name] = fmt.Sprintf("disk %s was resized from %d to %d bytes since point %s", d.Name, size, d.VirtualSize, base.ID)
		case !d.Incremental:
			why := d.NoIncremental
			if why == "" {
				why = "its changes cannot be tracked"
			}
			whole[d.Name] = fmt.Sprintf("disk %s cannot be backed up incrementally: %s", d.Name, why)
		case len(cp.Disks) > 0 && !slices.Contains(cp.Disks, d.Name):
			whole[d.Name] = fmt.Sprintf("checkpoint %s does not track disk %s", cp.Name, d.Name)
		}
	}
	return whole
}

// NeededCheckpoints are the checkpoints the repository's chains still need on the
// guest once points are complete: the newest chain's newest point's (the next inc) and
// its full's (the next diff). Every other checkpoint of this repository can go.
func NeededCheckpoints(points []PointInfo) []string {
	base, full, why := chainBase(driver.LevelInc, points)
	if why != "" {
		return nil
	}
	var keep []string
	for _, c := range []string{full.Checkpoint, base.Checkpoint} {
		if c != "" && !slices.Contains(keep, c) {
			keep = append(keep, c)
		}
	}
	return keep
}
