package cli

import (
	"errors"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/selector"
)

// Exit codes. This is the only place errors become exit codes.
const (
	ExitOK      = 0 // everything done
	ExitFailure = 1 // some guest failed, was skipped for storage, or a --vmid token matched nothing
	ExitUsage   = 2 // bad command line or validation error; nothing was changed
	ExitConnect = 3 // could not connect or authenticate to the hypervisor
)

const exitStatusHelp = `
EXIT STATUS:
  0  success
  1  at least one guest failed (or was skipped because its storage is too full),
     or --vmid selected no guest, or a --vmid token matched no guest: the
     other guests are still processed first (--ignore-missing makes such a
     token only a warning), or a snapshot command could not lock its guest
  2  usage or validation error (bad flag, label, timestamp format, selection);
     nothing was changed
  3  cannot connect or authenticate to the hypervisor
In cv4pve mode (--compat cv4pve, or run as cv4pve-autosnap) the status is
0 or 1 only, as cv4pve-autosnap's: every failure above is 1.
`

// usageError marks an error the user fixes by changing the command line.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// usage wraps err as a usage error (exit 2).
func usage(err error) error {
	if err == nil {
		return nil
	}
	return usageError{err}
}

// ExitCode maps an error returned by a command to the process exit status.
func ExitCode(err error) int {
	var u usageError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &u):
		return ExitUsage
	case errors.Is(err, driver.ErrConnect):
		return ExitConnect
	case errors.Is(err, selector.ErrNoMatch), errors.Is(err, engine.ErrGuestsFailed):
		return ExitFailure
	}
	return ExitFailure
}

// exitCode is ExitCode in the run's mode: cv4pve-autosnap knows only 0 (success) and 1
// (anything failed), so cv4pve mode folds usage and connection errors into 1.
func (g *GlobalOptions) exitCode(err error) int {
	c := ExitCode(err)
	if g.cv4pve() && c != ExitOK {
		return ExitFailure
	}
	return c
}
