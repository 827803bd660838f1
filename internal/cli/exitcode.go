package cli

import (
	"errors"
	"fmt"

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

// Exit codes of `autosnap monitor`: the Nagios/Icinga plugin contract.
const (
	ExitMonitorOK       = 0
	ExitMonitorWarning  = 1
	ExitMonitorCritical = 2
	ExitMonitorUnknown  = 3
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
autosnap monitor is a Nagios/Icinga plugin and exits 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN (see autosnap monitor --help).
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

// pluginStatus is returned by `monitor` when the plugin status is not OK: its
// report is printed already, and the status is the exit status.
type pluginStatus struct{ code int }

func (e pluginStatus) Error() string { return fmt.Sprintf("monitor: plugin status %d", e.code) }

// reported tells whether err's message is already printed (no "ERROR:" line).
func reported(err error) bool {
	var p pluginStatus
	return errors.As(err, &p)
}

// ExitCode maps an error returned by a command to the process exit status.
func ExitCode(err error) int {
	var u usageError
	var p pluginStatus
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &p):
		return p.code
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
