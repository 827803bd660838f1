package cli

import (
	"fmt"
	"time"

	"github.com/autosnap/autosnap/internal/hook"
)

// hookRunner returns the runner for --script, or nil when there is none or it cannot
// run. A hook that cannot run (missing, not executable) must not leave the guests
// unprotected: the job goes on without it, the problem is printed now and returned
// again by execute at the end, which makes the run exit 1.
func (g *GlobalOptions) hookRunner(script string, timeout time.Duration) *hook.Runner {
	if script == "" {
		return nil
	}
	if err := hook.Validate(script); err != nil {
		g.brokenHook = fmt.Errorf("%w (the job ran without the hook)", err)
		fmt.Fprintf(g.stderr, "ERROR: %v: snapshots are taken and removed without the hook; the run will exit 1\n", err)
		return nil
	}
	return &hook.Runner{Path: script, Timeout: timeout}
}
