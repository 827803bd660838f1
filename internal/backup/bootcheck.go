package backup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/repo"
)

// BootGuestPrefix starts the name of every throwaway guest and temporary directory of
// `backup verify --boot`: autosnap-verify-<pid>-<guest>. A verify that died leaves them
// under that name; the next verify removes those whose process is gone (BootCheck.Sweep).
const BootGuestPrefix = driver.ThrowawayPrefix

// BootHost is what a boot check needs from a hypervisor connection.
type BootHost interface {
	driver.Driver
	driver.GuestDefiner
	driver.GuestRemover
	driver.AgentPinger
}

// BootCheck restores backup points into throwaway guests and waits for their agents.
type BootCheck struct {
	Host BootHost
	// Dir holds the temporary directories of the restored disks; "" is os.TempDir().
	Dir string
	// Timeout bounds the wait for the agent after the start.
	Timeout time.Duration
	// LockTimeout bounds the wait for the guest directory's shared lock.
	LockTimeout time.Duration
	// Poll is the interval between agent pings; 0 means 500 ms.
	Poll time.Duration
	// Log gets progress lines; nil discards them.
	Log func(string)
}

// BootResult is the outcome of one boot check. Err is nil when the agent answered.
type BootResult struct {
	Guest, Point, Throwaway string
	Took                    time.Duration
	Err                     error
}

func (b BootCheck) log(format string, a ...any) {
	if b.Log != nil {
		b.Log(fmt.Sprintf(format, a...))
	}
}

var nameUnsafe = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// throwawayName is the throwaway guest's name for guest: the prefix, this process's
// pid (so Sweep can tell a live verify's guests from a dead one's) and the guest name.
func throwawayName(guest string) string {
	n := nameUnsafe.ReplaceAllString(guest, "_")
	if len(n) > 40 {
		n = n[:40]
	}
	return fmt.Sprintf("%s%d-%s", BootGuestPrefix, os.Getpid(), n)
}

// leftoverPid returns the pid in a throwaway name, ok false for names not ours.
func leftoverPid(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, BootGuestPrefix)
	if !ok {
		return 0, false
	}
	num, _, _ := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(num)
	return pid, err == nil && pid > 0
}

func pidAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// Sweep removes the throwaway guests and directories of verifies that are no longer
// running (killed, host crashed) and returns what it removed. Guests of a live verify
// (its pid alive) are left alone.
func (b BootCheck) Sweep(ctx context.Context) ([]string, error) {
	var done []string
	guests, err := b.Host.Guests(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing guests to remove leftovers of an earlier verify: %w", err)
	}
	for _, g := range guests {
		pid, ok := leftoverPid(g.Name)
		if !ok || pidAlive(pid) {
			continue
		}
		if err := b.Host.RemoveGuest(ctx, g); err != nil {
			return done, err
		}
		done = append(done, "removed the throwaway guest "+g.Name+" of an earlier verify")
	}
	dirs, _ := filepath.Glob(filepath.Join(b.dir(), BootGuestPrefix+"*"))
	for _, d := range dirs {
		pid, ok := leftoverPid(filepath.Base(d))
		if !ok || pidAlive(pid) {
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			return done, fmt.Errorf("removing %s left by an earlier verify: %w", d, err)
		}
		done = append(done, "removed "+d+" left by an earlier verify")
	}
	return done, nil
}

func (b BootCheck) dir() string {
	if b.Dir != "" {
		return b.Dir
	}
	return os.TempDir()
}

// Boot restores point p of rg into a temporary directory, defines a throwaway guest on
// it (new identity, no network interfaces), starts it and waits up to b.Timeout for its
// guest agent to answer. The guest and its files are removed before Boot returns,
// whatever happened, also when ctx ends (Ctrl-C). The shared lock on rg is held only
// while the disks are restored.
func (b BootCheck) Boot(ctx context.Context, rg *repo.Guest, p repo.Point) (res BootResult) {
	name := throwawayName(rg.ID.Name)
	res = BootResult{Guest: rg.ID.Name, Point: p.ID, Throwaway: name}
	fail := func(format string, a ...any) BootResult {
		res.Err = fmt.Errorf("guest %s, point %s: "+format, append([]any{rg.ID.Name, p.ID}, a...)...)
		return res
	}
	if len(p.Config) == 0 {
		return fail("the point holds no guest definition to boot")
	}
	if err := os.MkdirAll(b.dir(), 0o700); err != nil {
		return fail("%w", err)
	}
	tmp, err := os.MkdirTemp(b.dir(), name+"-")
	if err != nil {
		return fail("creating the directory for the restored disks: %w", err)
	}
	var defined *driver.Guest
	defer func() {
		// Clean up even when ctx was cancelled: the throwaway guest must not outlive us.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if defined != nil {
			if err := b.Host.RemoveGuest(cctx, *defined); err != nil {
				res.Err = errors.Join(res.Err, err)
				return // keep its disks: the guest may still use them
			}
		}
		if err := os.RemoveAll(tmp); err != nil {
			res.Err = errors.Join(res.Err, fmt.Errorf("removing %s: %w", tmp, err))
		}
	}()
	files, err := PlanRestore(p, nil, tmp, "", "qcow2")
	if err != nil {
		return fail("%w", err)
	}
	lctx, cancel := context.WithTimeout(ctx, b.LockTimeout)
	unlock, err := rg.RLock(lctx)
	cancel()
	if err != nil {
		return fail("%w", err)
	}
	disks := map[string]string{}
	for _, f := range files {
		if err := rg.RestoreDisk(ctx, p, f.Disk, f.Out, f.Format); err != nil {
			unlock()
			return fail("restoring disk %s: %w", f.Disk, err)
		}
		disks[f.Disk] = f.Out
	}
	unlock()
	b.log("%s: restored point %s into %s; booting it as %s", rg.ID.Name, p.ID, tmp, name)
	start := time.Now()
	sctx, cancel := context.WithTimeout(ctx, b.Timeout)
	defer cancel()
	// Removed by name: a define or start that failed half-way may have left a definition.
	defined = &driver.Guest{Name: name}
	ng, _, err := b.Host.DefineGuest(sctx, driver.DefineRequest{Config: p.Config, Name: name, Disks: disks, Dir: tmp, Start: true, NoNetwork: true})
	if err != nil {
		return fail("defining and starting the throwaway guest %s: %w", name, err)
	}
	poll := b.Poll
	if poll <= 0 {
		poll = 500 * time.Millisecond
	}
	for {
		err := b.Host.AgentPing(sctx, ng)
		if err == nil {
			res.Took = time.Since(start)
			return res
		}
		select {
		case <-sctx.Done():
			if ctx.Err() != nil {
				return fail("interrupted: %w", ctx.Err())
			}
			return fail("its guest agent did not answer within %s of the start (last: %v); the point may not boot, or the guest has no agent", b.Timeout, err)
		case <-time.After(poll):
		}
	}
}
