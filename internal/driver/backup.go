package driver

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// BackupLevel says how much of each disk a backup copies.
type BackupLevel string

// Backup levels.
const (
	// LevelFull copies every allocated block and creates a checkpoint: it starts a chain.
	LevelFull BackupLevel = "full"
	// LevelInc copies the blocks changed since the previous point's checkpoint.
	LevelInc BackupLevel = "inc"
	// LevelDiff copies the blocks changed since the chain's full.
	LevelDiff BackupLevel = "diff"
	// LevelCopy copies every allocated block and creates no checkpoint: it touches no chain.
	LevelCopy BackupLevel = "copy"
)

// BackupDisk is one disk as a Backupper sees it.
type BackupDisk struct {
	// Name is the disk's target (vda) or key (scsi0).
	Name string `json:"name"`
	// File is the image the guest writes now (the top of its chain).
	File   string `json:"file"`
	Format string `json:"format"`
	// VirtualSize is the disk's size in bytes as the guest sees it.
	VirtualSize uint64 `json:"virtual_size"`
	// Incremental is false when changes on this disk cannot be tracked (a raw image…);
	// NoIncremental then says why, for the message that explains a full.
	Incremental   bool   `json:"incremental"`
	NoIncremental string `json:"no_incremental,omitempty"`
}

// Checkpoint is an instant from which a guest's changes are tracked (a libvirt
// checkpoint, a set of persistent dirty bitmaps).
type Checkpoint struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	// Disks are the disks whose changes the checkpoint tracks.
	Disks []string `json:"disks"`
	// Unusable, when not empty, says why changes since this checkpoint cannot be read
	// (bitmap missing or inconsistent after an unclean stop, disk replaced…). A backup
	// relative to it must be a full.
	Unusable string `json:"unusable,omitempty"`
}

// BackupSource is what a Backupper would back up now.
type BackupSource struct {
	Disks []BackupDisk
	// Config is the guest's definition (libvirt domain XML, QEMU command line…), stored
	// with every backup point so a restore can define the guest again.
	Config []byte
	// Checkpoints are autosnap's checkpoints on the guest, oldest first. Checkpoints
	// that autosnap did not create are never listed, used or removed.
	Checkpoints []Checkpoint
}

// BackupTarget is where one disk's data goes.
type BackupTarget struct {
	Disk string
	// File is the qcow2 file to create; it must not exist yet.
	File string
	// Backing, for an inc or diff, is the previous point's file of this disk, written
	// into File's header as its backing file exactly as given (it may be relative to
	// File's directory). Blocks the backup does not copy read through to it; blocks
	// that changed to zero are written as zero clusters, never left unallocated.
	Backing string
}

// BackupRequest asks for one backup point of one guest.
type BackupRequest struct {
	Level BackupLevel
	// Since is the checkpoint whose changes an inc or diff copies.
	Since string
	// Checkpoint is the checkpoint this backup creates (full, inc, diff); empty for a
	// copy. Its instant is the backup's.
	Checkpoint string
	// Targets are the disks to back up; disks not listed are left out.
	Targets []BackupTarget
	// Freeze, when set, is called right before the backup's instant is fixed; the
	// Backupper calls the thaw it returns as soon as the job has started (or failed to),
	// so the guest stays frozen only while the job starts.
	Freeze func(ctx context.Context) (thaw func(), err error)
	// Progress, when set, is called now and then with the bytes copied so far and the
	// bytes to copy in all.
	Progress func(done, total uint64)
}

// BackupResult describes a finished backup.
type BackupResult struct {
	// Instant is when the data was captured (the checkpoint's time).
	Instant time.Time
	// Bytes is how many bytes were copied, per disk.
	Bytes map[string]uint64
}

// Backupper takes backups of a guest's disks into files the backup engine names.
// What is specific to a hypervisor (libvirt checkpoints and push backup, QMP bitmaps
// and fleecing, persistent bitmaps of a guest that is shut off) lives behind it; the
// engine (internal/backup) decides levels and the repository (internal/repo) owns the
// files.
type Backupper interface {
	// BackupSource says which disks the guest has, its definition and autosnap's
	// checkpoints.
	BackupSource(ctx context.Context, g Guest) (BackupSource, error)
	// Backup copies the guest's disks into req.Targets. On error it leaves no job
	// running and no checkpoint of req.Checkpoint behind; the files it created may
	// remain (the caller removes them).
	Backup(ctx context.Context, g Guest, req BackupRequest) (BackupResult, error)
	// DeleteCheckpoint removes one of autosnap's checkpoints (and its bitmaps) without
	// losing the changes later checkpoints track. It returns an error wrapping
	// ErrNotFound when there is no such checkpoint.
	DeleteCheckpoint(ctx context.Context, g Guest, name string) error
}

// CheckpointPrefix starts the name of every checkpoint (and bitmap) autosnap creates;
// drivers never touch one without it.
const CheckpointPrefix = "autosnap-"

// Check validates r for guest as every Backupper must before doing anything: a known
// level, the checkpoint an inc or diff starts from, autosnap's own checkpoint names,
// and a target file per disk with a backing file only for inc and diff.
func (r BackupRequest) Check(guest string) error {
	switch r.Level {
	case LevelFull, LevelCopy:
	case LevelInc, LevelDiff:
		if r.Since == "" {
			return fmt.Errorf("guest %s: an %s backup needs the checkpoint it starts from", guest, r.Level)
		}
	default:
		return fmt.Errorf("guest %s: unknown backup level %q", guest, r.Level)
	}
	if r.Level == LevelCopy && r.Checkpoint != "" {
		return fmt.Errorf("guest %s: a copy creates no checkpoint, but checkpoint %s was asked for", guest, r.Checkpoint)
	}
	if r.Level != LevelCopy && !strings.HasPrefix(r.Checkpoint, CheckpointPrefix) {
		return fmt.Errorf("guest %s: a %s backup creates a checkpoint named %s…, not %q", guest, r.Level, CheckpointPrefix, r.Checkpoint)
	}
	if r.Since != "" && !strings.HasPrefix(r.Since, CheckpointPrefix) {
		return fmt.Errorf("guest %s: checkpoint %s is not autosnap's; backups only start from autosnap's own", guest, r.Since)
	}
	if len(r.Targets) == 0 {
		return fmt.Errorf("guest %s: the backup names no disk", guest)
	}
	for _, t := range r.Targets {
		if t.File == "" {
			return fmt.Errorf("guest %s disk %s: no target file", guest, t.Disk)
		}
		if t.Backing != "" && r.Level != LevelInc && r.Level != LevelDiff {
			return fmt.Errorf("guest %s disk %s: a %s backup has no backing file", guest, t.Disk, r.Level)
		}
	}
	return nil
}
