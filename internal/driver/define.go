package driver

import "context"

// DefineRequest asks for a new guest made from a definition saved with a backup.
type DefineRequest struct {
	// Config is the saved definition (BackupSource.Config of the backed-up guest).
	Config []byte
	// Name is the new guest's name; it must not be taken.
	Name string
	// Disks maps each restored disk (target name, e.g. vda) to its new image file
	// (qcow2, standalone). Disks of the definition that are not listed are left out of
	// the new guest, so it never shares an image with the original.
	Disks map[string]string
	// Dir holds the new guest's own files other than disks (console logs); empty
	// means the directory of its disks.
	Dir string
	// Start starts the new guest once defined.
	Start bool
}

// GuestDefiner defines new guests from saved definitions (restore --define). The new
// guest gets a new identity (UUID, MAC addresses) so it can run beside the original.
type GuestDefiner interface {
	// DefineGuest defines the guest and returns it (started when req.Start). Notes
	// say what was changed beyond name, identity and disks (devices left out…).
	DefineGuest(ctx context.Context, req DefineRequest) (g Guest, notes []string, err error)
	// PullDisks copies into each named disk's top image, while the guest runs, all the
	// data it still reads from its backing chain, then drops the backing chain, so the
	// guest no longer depends on it (restore --instant). progress gets the bytes done
	// and to do over all disks. On error or when ctx ends the pulls are cancelled and
	// the guest keeps running on its chain.
	PullDisks(ctx context.Context, g Guest, disks []string, progress func(done, total uint64)) error
}
