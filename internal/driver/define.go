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
	// NoNetwork leaves every network interface out of the new guest, so a throwaway
	// clone cannot clash with the original on the network (backup verify --boot).
	NoNetwork bool
}

// GuestDefiner defines new guests from saved definitions (restore --define). The new
// guest gets a new identity (UUID, MAC addresses) so it can run beside the original.
type GuestDefiner interface {
	// DefineGuest defines the guest and returns it (started when req.Start). Notes
	// say what was changed beyond name, identity and disks (devices left out…).
	DefineGuest(ctx context.Context, req DefineRequest) (g Guest, notes []string, err error)
	// MoveDisks copies each disk (the key of moves) of the running guest, read through
	// its whole backing chain, into a new standalone image (the value), switches the
	// guest over to it and makes its definition name it, so the guest no longer
	// depends on the chain (restore --instant). progress gets the bytes done and to do
	// over all disks. On error or when ctx ends the copies are cancelled and the guest
	// keeps running on its chain.
	MoveDisks(ctx context.Context, g Guest, moves map[string]string, progress func(done, total uint64)) error
}
