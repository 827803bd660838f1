package driver

import "context"

// DiskState is what one disk of a guest uses at the moment.
type DiskState struct {
	// Source is the image the guest reads and writes.
	Source string
	// Mirror is the destination of a block copy running on the disk, "" when none.
	Mirror string
}

// DiskStater reports the live state of a guest's disks, keyed by target name
// (restore --instant resuming a move that was interrupted).
type DiskStater interface {
	DiskStates(ctx context.Context, g Guest) (map[string]DiskState, error)
}
