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
}

// ErrLevelImpossible marks an explicit --level inc or diff that the repository and the
// guest cannot give; the error says why.
var ErrLevelImpossible = fmt.Errorf("level not possible")

// Decide picks the level of the next backup of a guest from the asked level, the
// guest's complete points in the repository (oldest first), the guest's checkpoints
// (ours only, from BackupSource) and the disks selected for this backup.
//
// auto is an inc when the newest chain can be continued and a full otherwise, with the
// reason: no point yet, the checkpoint the next inc needs is gone or unusable, the set
// of disks or a disk's size changed, or a disk cannot track changes. An explicit inc or
// diff fails with that same reason (wrapping ErrLevelImpossible) instead of silently
// taking a full. A diff stacks on the chain's full and copies changes since the full's
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
	if why == "" {
		why = usable(base, checkpoints, disks)
	}
	if why != "" {
		if want != LevelAuto {
			return Decision{}, fmt.Errorf("%w: cannot take %s: %s; take a full with --level full (or let --level auto decide)", ErrLevelImpossible, article(level), why)
		}
		return Decision{Level: driver.LevelFull, Reason: why}, nil
	}
	return Decision{Level: level, Parent: base.ID, Chain: full.ID, Since: base.Checkpoint}, nil
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
	fi := slices.IndexFunc(points, func(p PointInfo) bool { return p.ID == chain && p.Level == driver.LevelFull })
	if fi < 0 {
		return base, full, fmt.Sprintf("the full %s that starts the newest chain (of point %s) is not in the repository", chain, points[last].ID)
	}
	full = points[fi]
	if level == driver.LevelDiff {
		return full, full, ""
	}
	return points[last], full, ""
}

// usable says why changes since base cannot be read on the guest for these disks, or
// "" when they can.
func usable(base PointInfo, checkpoints []driver.Checkpoint, disks []driver.BackupDisk) string {
	if base.Checkpoint == "" {
		return fmt.Sprintf("point %s has no checkpoint to continue from", base.ID)
	}
	ci := slices.IndexFunc(checkpoints, func(c driver.Checkpoint) bool { return c.Name == base.Checkpoint })
	if ci < 0 {
		return fmt.Sprintf("checkpoint %s of point %s is gone from the guest (removed, or the guest was redefined or restored)", base.Checkpoint, base.ID)
	}
	cp := checkpoints[ci]
	if cp.Unusable != "" {
		return fmt.Sprintf("checkpoint %s of point %s cannot be used: %s", cp.Name, base.ID, cp.Unusable)
	}
	var added, removed, resized []string
	had := map[string]uint64{}
	for _, d := range base.Disks {
		had[d.Name] = d.VirtualSize
	}
	now := map[string]bool{}
	for _, d := range disks {
		now[d.Name] = true
		size, ok := had[d.Name]
		switch {
		case !ok:
			added = append(added, d.Name)
		case size != d.VirtualSize:
			resized = append(resized, fmt.Sprintf("%s from %d to %d bytes", d.Name, size, d.VirtualSize))
		}
	}
	for _, d := range base.Disks {
		if !now[d.Name] {
			removed = append(removed, d.Name)
		}
	}
	var parts []string
	if len(added) > 0 {
		parts = append(parts, "added "+strings.Join(added, ", "))
	}
	if len(removed) > 0 {
		parts = append(parts, "removed "+strings.Join(removed, ", "))
	}
	if len(resized) > 0 {
		parts = append(parts, "resized "+strings.Join(resized, ", "))
	}
	if len(parts) > 0 {
		return fmt.Sprintf("the disks changed since point %s: %s", base.ID, strings.Join(parts, "; "))
	}
	for _, d := range disks {
		if !d.Incremental {
			why := d.NoIncremental
			if why == "" {
				why = "its changes cannot be tracked"
			}
			return fmt.Sprintf("disk %s cannot be backed up incrementally: %s", d.Name, why)
		}
		if len(cp.Disks) > 0 && !slices.Contains(cp.Disks, d.Name) {
			return fmt.Sprintf("checkpoint %s does not track disk %s", cp.Name, d.Name)
		}
	}
	return ""
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
