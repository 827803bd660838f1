package backup

import (
	"context"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
)

// Store is the repository as the engine uses it. internal/repo implements it (see
// RepoStore); the engine never writes into the repository itself.
type Store interface {
	// Tag is a short stable identity of the repository, part of the checkpoint names,
	// so backups of one guest into two repositories keep their checkpoints apart.
	Tag() string
	// Guest opens (or creates) the guest's directory.
	Guest(g driver.Guest, driverName string) (GuestStore, error)
}

// GuestStore is one guest's part of the repository.
type GuestStore interface {
	// Lock takes the repository's lock of this guest (across hosts).
	Lock(ctx context.Context) (unlock func(), err error)
	// Repair removes what interrupted runs left (partial points, half-done prunes) and
	// says what it did.
	Repair(ctx context.Context) ([]string, error)
	// Points are the guest's complete points, oldest first.
	Points() ([]Point, error)
	// Begin starts a new point.
	Begin(m Meta) (Pending, error)
}

// Pending is a point being written.
type Pending interface {
	// ID is the point's final ID.
	ID() string
	// File is where the Backupper writes disk's data.
	File(disk string) string
	// Backing is the backing file name to write into File for an inc or diff.
	Backing(disk string) string
	// Commit completes the point with m's final fields.
	Commit(ctx context.Context, m Meta) (Point, error)
	// Abort removes the partial point.
	Abort() error
}

// Meta is what the engine records about a point (the manifest's fields it fills).
type Meta struct {
	ID, Chain, Parent, Checkpoint string
	Level                         driver.BackupLevel
	Started, Finished             time.Time
	Consistency                   driver.Consistency
	Config                        []byte
	AutosnapVersion               string
	Disks                         []MetaDisk
}

// MetaDisk is one disk of a point.
type MetaDisk struct {
	Name, Format string
	VirtualSize  uint64
	// FullReason says why this disk was copied whole in a point of a chain.
	FullReason string
}

// Point is a complete point as the engine sees it.
type Point struct {
	PointInfo
	Dir      string
	Finished time.Time
	Started  time.Time
	// Files are the point's disk files by disk name (absolute paths).
	Files map[string]string
	// Config is the guest definition saved with the point.
	Config []byte
}
