package driver

import "context"

// GuestRemover removes guests autosnap created itself (the throwaway guests of
// `backup verify --boot`): it stops the guest if it runs and deletes its definition
// with its snapshot and checkpoint metadata and NVRAM. Image files are not touched.
type GuestRemover interface {
	RemoveGuest(ctx context.Context, g Guest) error
}
