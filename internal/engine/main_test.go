package engine

import (
	"context"
	"os"
	"os/exec"
	"testing"

	"github.com/autosnap/autosnap/internal/watchdog"
)

// watchdogEnv makes the test binary serve the freeze watchdog's protocol (with a thaw
// that does nothing: the fake driver lives in the parent) instead of running tests.
const watchdogEnv = "AUTOSNAP_ENGINE_TEST_WATCHDOG"

func TestMain(m *testing.M) {
	if os.Getenv(watchdogEnv) == "1" {
		_ = watchdog.Serve(os.Stdin, os.Stdout, watchdog.DefaultBound, func(context.Context, string) error { return nil }, os.Stderr)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// testWatchdog is a watchdog client whose process is this test binary.
func testWatchdog(t *testing.T) *watchdog.Client {
	c := &watchdog.Client{Command: func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), watchdogEnv+"=1")
		return cmd
	}}
	t.Cleanup(func() { c.Close() })
	return c
}
