package qmp

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/watchdog"
)

// GuardCommand builds the freeze watchdog process serving the qmp:// host given as
// its argument (the command layer sets it: autosnap's hidden watchdog command). Before
// a backup stops a guest's CPUs the driver starts it and arms it with
// watchdog.ActionResume, so that CPUs stopped by a run that dies (SIGKILL, OOM) run
// again as soon as the run is gone: the watchdog then calls ResumeStopped. When nil
// (the driver used as a library without it) the CPUs are resumed by the next autosnap
// command that opens the guest.
var GuardCommand func(host string) *exec.Cmd

// guardTimeout bounds starting and arming the guard.
const guardTimeout = 30 * time.Second

// crashBackupStopped is the crash point just after a multi-disk backup stopped the
// guest's CPUs, before its drives switch to the fleecing filters (see package crash).
const crashBackupStopped = "qmp.backup-cpus-stopped"

// armResume starts the watchdog for g and arms it to resume g's CPUs; the returned
// release disarms and stops it (call it once the CPUs run again). It returns a no-op
// release when no GuardCommand is set.
func (d *Driver) armResume(ctx context.Context, g driver.Guest) (release func() error, err error) {
	if GuardCommand == nil {
		return func() error { return nil }, nil
	}
	c := &watchdog.Client{Command: func() *exec.Cmd { return GuardCommand("qmp://" + d.node) }}
	actx, cancel := context.WithTimeout(ctx, guardTimeout)
	defer cancel()
	id, err := c.ArmAction(actx, g.Key(), watchdog.ActionResume)
	if err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("arming the watchdog that resumes the CPUs if autosnap dies: %w", err)
	}
	return func() error {
		// Independent of ctx: the guard must be disarmed before it is closed, or
		// closing it makes it resume (and wait for this process's lock).
		dctx, cancel := context.WithTimeout(context.Background(), guardTimeout)
		defer cancel()
		err := c.Disarm(dctx, id)
		if errors.Is(err, watchdog.ErrFired) {
			err = nil // it found the CPUs running, or resumed them: either is fine now
		}
		return errors.Join(err, c.Close())
	}, nil
}

// ResumeStopped runs the CPUs of g again if a backup stopped them and its run died:
// it removes what the interrupted backup journalled in the sidecar left in QEMU (see
// repairBackup), which sends cont only when the sidecar says autosnap stopped a
// running guest and QEMU still reports it paused (running false, status "paused"), so
// a guest someone else paused stays paused. A guest whose QEMU is not running, or
// without an interrupted backup, is left alone. The watchdog calls it; it waits for
// the guest's lock, which a living run holds.
func (d *Driver) ResumeStopped(ctx context.Context, g driver.Guest) error {
	e, err := d.find(g)
	if err != nil {
		return err
	}
	unlock, err := d.lock(ctx, e)
	if err != nil {
		return err
	}
	defer unlock()
	s, err := d.connect(ctx, e, d.timeout)
	if err != nil || s == nil {
		return err
	}
	defer s.close()
	return repairBackup(ctx, s)
}
