package testbed

import (
	"fmt"
	"os"
	"testing"
)

// RunWithStateDir runs m with $AUTOSNAP_STATE_DIR set to a new temporary directory,
// unless the environment already sets it, and removes the directory afterwards: the
// journals a test run writes must not land in the host's
// /var/lib/autosnap, where a later real run would find records of guests that no
// longer exist. It returns m.Run's code, for os.Exit.
func RunWithStateDir(m *testing.M) int {
	if os.Getenv("AUTOSNAP_STATE_DIR") != "" {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "autosnap-test-state-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "creating the tests' state directory: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	os.Setenv("AUTOSNAP_STATE_DIR", dir)
	return m.Run()
}
