package driver

import "context"

// GuestRemover removes guests autosnap created itself (the throwaway guests of
// `backup verify --boot`): it stops the guest if it runs and deletes its definition
// with its snapshot and checkpoint metadata and NVRAM. Image files are not touched.
type GuestRemover interface {
	// RemoveGuest refuses a guest whose name does not start with ThrowawayPrefix.
	RemoveGuest(ctx context.Context, g Guest) error
}

// ThrowawayPrefix starts the name of every guest autosnap defines only to remove it
// again (verify --boot); GuestRemover removes no other guest.
const ThrowawayPrefix = "autosnap-verify-"
