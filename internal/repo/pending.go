package repo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Pending is a point being written: a .partial-<ID> directory in the guest directory.
// Nothing lists it until Commit renames it to <ID>; Repair removes it if the run dies.
type Pending struct {
	g *Guest
	m Manifest
	// Dir is the .partial directory the disk files are created in.
	Dir    string
	parent *Point
	disks  map[string]DiskManifest // as announced to Begin
}

// testPoint is called at the named moments of Commit and Prune; tests replace it to
// kill the process there. crash.Point is called at the same moments.
var testPoint = func(string) {}

// Begin starts a point described by m, in a new .partial directory. The caller must
// hold the guest's lock (Lock) until Commit or Abort.
//
// m.Level is required; m.Started is the point's instant (zero means now) and gives
// its ID (NewID) unless m.ID is set; a taken ID gets a suffix -2, -3…. An inc or diff
// names its m.Parent (a complete point of the guest that is not a copy); Begin takes
// m.Chain from it. A full starts the chain named by its own ID; a copy has neither
// chain nor parent. m.Disks lists the disks to back up: Name, VirtualSize when known
// (which lets Backing detect a resized disk), and FullReason for a disk the caller
// copies whole in an inc or diff (a raw disk, a lost bitmap): Backing is then "".
func (g *Guest) Begin(m Manifest) (*Pending, error) {
	if !heldExclusive(filepath.Join(g.Dir, LockFile)) {
		return nil, fmt.Errorf("guest %s: Begin needs the guest's lock (Guest.Lock) held until Commit or Abort", g.ID.Name)
	}
	if m.Started.IsZero() {
		m.Started = time.Now()
	}
	m.Started = m.Started.UTC()
	m.Format = Format
	m.Guest = g.ID
	p := &Pending{g: g, disks: map[string]DiskManifest{}}
	if len(m.Disks) == 0 {
		return nil, fmt.Errorf("guest %s: a backup point needs at least one disk", g.ID.Name)
	}
	for _, d := range m.Disks {
		if !diskRe.MatchString(d.Name) {
			return nil, fmt.Errorf("guest %s: disk name %q cannot name a file in the repository", g.ID.Name, d.Name)
		}
		if _, dup := p.disks[d.Name]; dup {
			return nil, fmt.Errorf("guest %s: disk %s listed twice", g.ID.Name, d.Name)
		}
		p.disks[d.Name] = d
	}
	switch m.Level {
	case LevelInc, LevelDiff:
		if m.Parent == "" {
			return nil, fmt.Errorf("guest %s: an %s point needs a parent point", g.ID.Name, m.Level)
		}
		parent, err := g.Point(m.Parent)
		if err != nil {
			return nil, err
		}
		if parent.Level == LevelCopy {
			return nil, fmt.Errorf("guest %s: point %s is a copy and starts no chain; an %s cannot stack on it", g.ID.Name, parent.ID, m.Level)
		}
		p.parent = &parent
		m.Chain = parent.Chain
	case LevelFull, LevelCopy:
		if m.Parent != "" {
			return nil, fmt.Errorf("guest %s: a %s point has no parent (got %s)", g.ID.Name, m.Level, m.Parent)
		}
	default:
		return nil, fmt.Errorf("guest %s: unknown backup level %q (full, inc, diff or copy)", g.ID.Name, m.Level)
	}
	base := m.ID
	if base == "" {
		base = NewID(m.Started, m.Level)
	}
	if !ValidID(base) {
		return nil, fmt.Errorf("guest %s: %q is no point ID", g.ID.Name, base)
	}
	for n := 1; ; n++ {
		id := base
		if n > 1 {
			id = base + "-" + strconv.Itoa(n)
		}
		if _, err := os.Lstat(filepath.Join(g.Dir, id)); err == nil {
			continue
		}
		dir := filepath.Join(g.Dir, PartialPfx+id)
		err := os.Mkdir(dir, 0o700)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("guest %s: creating %s: %w", g.ID.Name, dir, err)
		}
		m.ID = id
		p.Dir = dir
		break
	}
	switch m.Level {
	case LevelFull:
		m.Chain = m.ID
	case LevelCopy:
		m.Chain = ""
	}
	p.m = m
	return p, nil
}

// ID is the ID the point will have.
func (p *Pending) ID() string { return p.m.ID }

// Manifest is the manifest as Begin completed it (ID, chain, parent).
func (p *Pending) Manifest() Manifest { return p.m }

// File is the absolute path of the qcow2 file the Backupper creates for disk.
func (p *Pending) File(disk string) string { return filepath.Join(p.Dir, disk+".qcow2") }

// Backing is the backing file to write into disk's image, relative to the image's
// directory (../<parentID>/<disk>.qcow2), for an inc or diff whose parent has the
// disk at the same virtual size. It is "" for a full or copy and when the disk must
// be copied whole: FullReason then says why.
func (p *Pending) Backing(disk string) string {
	if b, _ := p.backing(disk); b != "" {
		return b
	}
	return ""
}

// FullReason says why disk is copied whole in an inc or diff ("" when it is not, or
// when the point is a full or copy anyway).
func (p *Pending) FullReason(disk string) string {
	_, why := p.backing(disk)
	return why
}

func (p *Pending) backing(disk string) (string, string) {
	if p.parent == nil {
		return "", ""
	}
	if why := p.disks[disk].FullReason; why != "" {
		return "", why
	}
	pd, ok := p.parent.Disk(disk)
	if !ok {
		return "", fmt.Sprintf("disk %s is not in the parent point %s (added since)", disk, p.parent.ID)
	}
	if want := p.disks[disk].VirtualSize; want != 0 && pd.VirtualSize != want {
		return "", fmt.Sprintf("disk %s was resized from %d to %d bytes since the parent point %s", disk, pd.VirtualSize, want, p.parent.ID)
	}
	return backingName(p.parent.ID, pd.File), ""
}

// Commit completes the point: it checks every disk of m (or of Begin's manifest when
// m.Disks is empty) has its file with the expected backing, records formats, sizes
// and checksums, writes config.xml and manifest.json (temporary file, fsync, rename),
// fsyncs the files, renames the directory to its ID and fsyncs the guest directory.
// From m it takes Checkpoint, Finished (zero: now), Consistency, Config,
// AutosnapVersion, Started when set, and the disks' FullReason; identity fields (ID,
// level, chain, parent) stay as Begin set them. On error the point stays pending (call
// Abort, or Repair removes it).
func (p *Pending) Commit(ctx context.Context, m Manifest) (Point, error) {
	g := p.g
	final := p.m
	final.Checkpoint = m.Checkpoint
	final.Finished = m.Finished
	if final.Finished.IsZero() {
		final.Finished = time.Now()
	}
	final.Finished = final.Finished.UTC()
	if !m.Started.IsZero() {
		final.Started = m.Started.UTC()
	}
	final.Consistency = m.Consistency
	final.Config = m.Config
	final.AutosnapVersion = m.AutosnapVersion
	disks := m.Disks
	if len(disks) == 0 {
		disks = p.m.Disks
	}
	final.Disks = nil
	for _, d := range disks {
		if _, ok := p.disks[d.Name]; !ok {
			return Point{}, fmt.Errorf("guest %s: point %s: disk %s was not announced to Begin", g.ID.Name, final.ID, d.Name)
		}
		file := p.File(d.Name)
		info, err := headerInfo(ctx, file)
		if err != nil {
			return Point{}, fmt.Errorf("guest %s: point %s, disk %s: %w", g.ID.Name, final.ID, d.Name, err)
		}
		if info.Format != "qcow2" {
			return Point{}, fmt.Errorf("guest %s: point %s, disk %s: %s is %s, a repository holds qcow2 only", g.ID.Name, final.ID, d.Name, file, info.Format)
		}
		want := p.Backing(d.Name)
		if info.BackingFilename != want {
			return Point{}, fmt.Errorf("guest %s: point %s, disk %s: %s has backing file %q, want %q", g.ID.Name, final.ID, d.Name, file, info.BackingFilename, want)
		}
		if err := os.Chmod(file, 0o600); err != nil {
			return Point{}, fmt.Errorf("guest %s: point %s: %w", g.ID.Name, final.ID, err)
		}
		dm := DiskManifest{
			Name:        d.Name,
			File:        filepath.Base(file),
			Format:      info.Format,
			Backing:     want,
			FullReason:  d.FullReason,
			VirtualSize: info.VirtualSize,
		}
		if dm.FullReason == "" {
			dm.FullReason = p.FullReason(d.Name)
		}
		final.Disks = append(final.Disks, dm)
	}
	if err := fillSums(ctx, p.Dir, final.Disks); err != nil {
		return Point{}, fmt.Errorf("guest %s: point %s: %w", g.ID.Name, final.ID, err)
	}
	if len(final.Config) > 0 {
		if err := writeFileAtomic(filepath.Join(p.Dir, ConfigFile), final.Config); err != nil {
			return Point{}, fmt.Errorf("guest %s: point %s: %w", g.ID.Name, final.ID, err)
		}
	}
	if err := writeJSONAtomic(filepath.Join(p.Dir, ManifestFile), final); err != nil {
		return Point{}, fmt.Errorf("guest %s: point %s: %w", g.ID.Name, final.ID, err)
	}
	hit(PointCommitManifest)
	dir := filepath.Join(g.Dir, final.ID)
	if err := os.Rename(p.Dir, dir); err != nil {
		return Point{}, fmt.Errorf("guest %s: point %s: completing it: %w", g.ID.Name, final.ID, err)
	}
	if err := syncDir(g.Dir); err != nil {
		return Point{}, fmt.Errorf("guest %s: point %s: %w", g.ID.Name, final.ID, err)
	}
	p.Dir = dir
	return Point{Manifest: final, Dir: dir}, nil
}

// Abort removes the pending point and its files.
func (p *Pending) Abort() error {
	if filepath.Base(p.Dir) != PartialPfx+p.m.ID {
		return nil
	}
	if err := os.RemoveAll(p.Dir); err != nil {
		return fmt.Errorf("guest %s: removing the unfinished point %s: %w", p.g.ID.Name, p.Dir, err)
	}
	return syncDir(p.g.Dir)
}

// fileSize is the bytes path occupies on its file system.
func fileSize(path string) (uint64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return uint64(s.Blocks) * 512, nil
	}
	return uint64(st.Size()), nil
}
