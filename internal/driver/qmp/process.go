package qmp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	qc "github.com/autosnap/autosnap/internal/qmp"
)

// stop quits QEMU and waits until its process is gone, so that its images are free
// for qemu-img.
func (v *view) stop(ctx context.Context) error {
	s := v.s
	if err := s.m.Execute(ctx, "quit", nil, nil); err != nil && !errors.Is(err, qc.ErrClosed) {
		return fmt.Errorf("guest %s: quitting QEMU to revert its disks: %w", v.e.name, err)
	}
	s.close()
	v.s = nil
	for {
		if s.pid <= 0 || syscall.Kill(s.pid, 0) != nil {
			break
		}
		// A zombie of ours or another's child counts as gone once it stopped running.
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.pid)); err == nil && procState(st) == "Z" {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("guest %s: QEMU (pid %d) did not exit after quit: %w", v.e.name, s.pid, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	v.m.LastState = string(driver.StateShutoff)
	return nil
}

func procState(stat []byte) string {
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

// logPath is where QEMU's output goes when autosnap starts a guest that does not
// daemonize itself.
func (e entry) logPath() string { return strings.TrimSuffix(e.meta, metaSuffix) + ".autosnap-qemu.log" }

// start runs QEMU again with its recorded command line and waits until its QMP socket
// answers; the guest then runs, or stays paused with paused.
func (v *view) start(ctx context.Context, paused bool) error {
	argv := v.m.Argv
	if len(argv) == 0 {
		return fmt.Errorf("guest %s: autosnap has no record of QEMU's command line, so it cannot start the guest: start it yourself", v.e.name)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = v.m.Cwd
	if slices.Contains(argv, "-daemonize") || slices.Contains(argv, "--daemonize") {
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("guest %s: starting QEMU (%s): %v: %s", v.e.name, argv[0], err, trimmed(out))
		}
	} else {
		log, err := os.OpenFile(v.e.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("guest %s: starting QEMU: %w", v.e.name, err)
		}
		defer log.Close()
		cmd.Stdout, cmd.Stderr = log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("guest %s: starting QEMU (%s): %w", v.e.name, argv[0], err)
		}
		// QEMU outlives autosnap; reap it if it exits while we still run.
		go cmd.Wait()
	}
	deadline := time.Now().Add(v.d.timeout)
	for {
		s, err := v.d.connect(ctx, v.e, v.d.timeout)
		if err != nil {
			return fmt.Errorf("guest %s: QEMU started, but: %w", v.e.name, err)
		}
		if s != nil {
			v.s = s
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("guest %s: QEMU started but its QMP socket %s did not appear within %s (see %s)", v.e.name, v.e.qmp, v.d.timeout, v.e.logPath())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("guest %s: waiting for QEMU to start: %w", v.e.name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	want, cmdName := driver.StateRunning, "cont"
	if paused {
		want, cmdName = driver.StatePaused, "stop"
	}
	if v.s.state != want {
		if err := v.s.m.Execute(ctx, cmdName, nil, nil); err != nil && !isState(err) {
			return fmt.Errorf("guest %s: QEMU started, but %s failed: %w", v.e.name, cmdName, err)
		}
		v.s.state = want
	}
	_, err := v.d.record(ctx, v.s)
	return err
}

// agentFor connects to e's guest agent; every failure wraps driver.ErrAgent.
func (d *Driver) agentFor(ctx context.Context, e entry) (*qc.Agent, error) {
	if _, err := os.Stat(e.agent); err != nil {
		return nil, fmt.Errorf("guest %s: no guest agent socket %s (QEMU not running, or started without the org.qemu.guest_agent.0 channel): %w", e.name, e.agent, driver.ErrAgent)
	}
	a, err := qc.DialAgent(ctx, e.agent)
	if err != nil {
		return nil, fmt.Errorf("guest %s: guest agent on %s: %w: %w", e.name, e.agent, err, driver.ErrAgent)
	}
	return a, nil
}

func (d *Driver) withAgent(ctx context.Context, g driver.Guest, f func(*qc.Agent) error) error {
	e, err := d.find(g)
	if err != nil {
		return err
	}
	a, err := d.agentFor(ctx, e)
	if err != nil {
		return err
	}
	defer a.Close()
	if err := f(a); err != nil {
		return fmt.Errorf("guest %s: %w: %w", e.name, err, driver.ErrAgent)
	}
	return nil
}

// AgentPing implements driver.AgentPinger.
func (d *Driver) AgentPing(ctx context.Context, g driver.Guest) error {
	return d.withAgent(ctx, g, func(a *qc.Agent) error { return a.Ping(ctx) })
}

// Freeze implements driver.Quiescer.
func (d *Driver) Freeze(ctx context.Context, g driver.Guest) (n int, err error) {
	err = d.withAgent(ctx, g, func(a *qc.Agent) error { n, err = a.Freeze(ctx); return err })
	return n, err
}

// Thaw implements driver.Quiescer; thawing a guest that is not frozen does nothing.
func (d *Driver) Thaw(ctx context.Context, g driver.Guest) (n int, err error) {
	err = d.withAgent(ctx, g, func(a *qc.Agent) error { n, err = a.Thaw(ctx); return err })
	return n, err
}

// FrozenState implements driver.Quiescer.
func (d *Driver) FrozenState(ctx context.Context, g driver.Guest) (frozen bool, err error) {
	err = d.withAgent(ctx, g, func(a *qc.Agent) error { frozen, err = a.FreezeStatus(ctx); return err })
	return frozen, err
}

var (
	_ driver.AgentPinger      = (*Driver)(nil)
	_ driver.Quiescer         = (*Driver)(nil)
	_ driver.SnapshotPreparer = (*Driver)(nil)
	_ driver.RevertNoter      = (*Driver)(nil)
)
