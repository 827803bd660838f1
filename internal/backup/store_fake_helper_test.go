package backup

import "testing"

// newTestStore is the repository the engine tests use.
func newTestStore(t *testing.T, dir string) Store { return newFakeStore(dir) }
