package driver

import "context"

// Bitmap is one of autosnap's persistent dirty bitmaps in one image of a guest's disk.
type Bitmap struct {
	Disk  string `json:"disk"`
	Image string `json:"image"`
	Name  string `json:"name"`
	// Flags are QEMU's (auto = recording, in-use = held open or not stored cleanly).
	Flags []string `json:"flags,omitempty"`
	// Checkpoint is false for a bitmap no checkpoint accounts for (an orphan).
	Checkpoint bool `json:"checkpoint"`
}

// BitmapInspector shows the bitmaps behind a Backupper's checkpoints, image by image,
// and removes those no checkpoint accounts for. Only autosnap's bitmaps (named like its
// checkpoints) are listed or removed.
type BitmapInspector interface {
	Bitmaps(ctx context.Context, g Guest) ([]Bitmap, error)
	// RemoveOrphanBitmaps removes bitmaps Bitmaps listed with Checkpoint false; it fails
	// when the guest's images are in use or a bitmap is not such an orphan.
	RemoveOrphanBitmaps(ctx context.Context, g Guest, bms []Bitmap) error
}
