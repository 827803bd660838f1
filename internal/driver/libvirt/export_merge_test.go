package libvirt

import "testing"

// SetPointHook makes every crash point of a merge on the guest with uuid call f with
// the point's name, until the test ends. f may panic to stop the merge there as a
// SIGKILL would: nothing after the point runs but deferred calls.
func SetPointHook(t testing.TB, uuid string, f func(point string)) {
	pointHooks.Store(uuid, f)
	t.Cleanup(func() { pointHooks.Delete(uuid) })
}
