//go:build crashtest

package crashtest

// The harness: the two autosnap binaries, running them, interrupting the crash binary
// at its point, restarting libvirtd, and the processes autosnap leaves behind.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/testbed"
)

var (
	// shippedBin is autosnap as `make build` makes it: crash points compiled out. The
	// ordinary next run after an interruption uses it.
	shippedBin string
	// crashBin is built with -tags crashtest: it stops at AUTOSNAP_CRASH_AT.
	crashBin string
	// moduleRoot is the repository's root directory.
	moduleRoot string
)

// TestMain builds both binaries once into a temporary directory.
func TestMain(m *testing.M) {
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "autosnap-crashtest-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "crashtest:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		if moduleRoot, err = findModuleRoot(); err != nil {
			fmt.Fprintln(os.Stderr, "crashtest:", err)
			return 1
		}
		shippedBin = filepath.Join(dir, "autosnap")
		crashBin = filepath.Join(dir, "autosnap-crash")
		for _, b := range []struct{ out, tags string }{{shippedBin, ""}, {crashBin, "crashtest"}} {
			if err := buildAutosnap(b.out, b.tags); err != nil {
				fmt.Fprintln(os.Stderr, "crashtest:", err)
				return 1
			}
		}
		code := m.Run()
		if lastMatrix != nil {
			fmt.Printf("\n%s%s", matrixTable(lastMatrix), matrixFailures(lastMatrix))
		}
		return code
	}())
}

func findModuleRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the source directory")
	}
	root := filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return "", fmt.Errorf("module root %s: %w", root, err)
	}
	return root, nil
}

// buildAutosnap builds cmd/autosnap like `make build` (static, cgo-free) with the given
// build tags.
func buildAutosnap(out, tags string) error {
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	args := []string{"build", "-trimpath", "-o", out}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	cmd := exec.Command(gobin, append(args, "./cmd/autosnap")...)
	cmd.Dir = moduleRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

// result is one finished autosnap run.
type result struct {
	args           []string
	code           int            // exit status; -1 when killed by a signal
	signal         syscall.Signal // the signal that ended it, if any
	stdout, stderr string
	took           time.Duration
}

func (r result) String() string {
	end := fmt.Sprintf("exit %d", r.code)
	if r.signal != 0 {
		end = "killed by " + signalName(r.signal)
	}
	return fmt.Sprintf("autosnap %s → %s (%s)", strings.Join(r.args, " "), end, r.took.Round(time.Millisecond))
}

func signalName(s syscall.Signal) string {
	switch s {
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGPIPE:
		return "SIGPIPE"
	}
	return s.String()
}

// output is the run's stdout and stderr for logs and failure reasons.
func (r result) output() string {
	return strings.TrimSpace(strings.TrimSpace(r.stdout) + "\n" + strings.TrimSpace(r.stderr))
}

// baseEnv is the environment of every autosnap run: the test's own, without anything
// that would select a crash point or another host, with the scenario's journal
// directory.
func baseEnv(stateDir string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "AUTOSNAP_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "AUTOSNAP_STATE_DIR="+stateDir)
}

// runTimeout bounds one ordinary autosnap run.
const runTimeout = 10 * time.Minute

// runShipped runs the shipped binary to its end.
func runShipped(stateDir string, args ...string) result {
	cmd := exec.Command(shippedBin, args...)
	cmd.Env = baseEnv(stateDir)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	err := cmd.Start()
	if err != nil {
		return result{args: args, code: -1, stderr: err.Error()}
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(runTimeout):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		err = <-done
		errb.WriteString(fmt.Sprintf("\ncrashtest: killed after %v", runTimeout))
	}
	return finish(args, cmd, err, &out, &errb, start)
}

func finish(args []string, cmd *exec.Cmd, err error, out, errb *bytes.Buffer, start time.Time) result {
	r := result{args: args, stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	if cmd.ProcessState == nil {
		r.code = -1
		r.stderr += "\n" + err.Error()
		return r
	}
	r.code = cmd.ProcessState.ExitCode()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		r.signal = ws.Signal()
	}
	return r
}

// interruption is how a crashed run is interrupted at its point.
type interruption int

const (
	// killAtPoint: the crash binary SIGKILLs itself at the point; then whatever else
	// is left in its process group (a qemu-img it started) is killed too, as when a
	// service unit is killed. The freeze watchdog has its own process group and lives
	// on, as designed.
	killAtPoint interruption = iota
	// pauseThenKill: the binary waits at the point; the scenario's atPoint runs (to
	// throttle a block job, or to let qemu-img get half-way), then the test SIGKILLs
	// autosnap and, with killGroup, its process group.
	pauseThenKill
	// restartAtPoint: the binary waits at the point, libvirtd is restarted, then the
	// binary carries on with its dead connection until it ends by itself.
	restartAtPoint
)

func (i interruption) String() string {
	switch i {
	case killAtPoint, pauseThenKill:
		return "SIGKILL"
	case restartAtPoint:
		return "libvirtd restart"
	}
	return "?"
}

// crashRun describes one interrupted run.
type crashRun struct {
	point string // AUTOSNAP_CRASH_AT: name or name#N
	how   interruption
	// killGroup (pauseThenKill): also kill autosnap's process group. Without it the
	// children autosnap started (qemu-img) are left to the kernel: they must die with it.
	killGroup bool
	// atPoint runs while autosnap waits at the point (pauseThenKill, restartAtPoint);
	// an error fails the scenario.
	atPoint func(p *paused) error
	// env is added to the interrupted run's environment.
	env []string
}

// paused is an autosnap process waiting at its crash point.
type paused struct {
	pid   int
	point string
	at    time.Time // when autosnap wrote the crash file
}

// pointTimeout bounds how long a run may take to reach its point.
const pointTimeout = 5 * time.Minute

// errPointNotReached marks a run that ended (or timed out) without reaching its point.
var errPointNotReached = errors.New("crash point not reached")

// runCrash runs the crash binary until it reaches c.point and interrupts it there as
// c.how says. It returns the run's result and an error wrapping errPointNotReached when
// the point was not reached, or another error when the interruption did not go as
// planned. restart is called for restartAtPoint.
func runCrash(t testing.TB, stateDir, scratch string, c crashRun, restart func() error, args ...string) (result, error) {
	t.Helper()
	flag := filepath.Join(scratch, "crash-point")
	_ = os.Remove(flag)
	mode := "kill"
	if c.how != killAtPoint {
		mode = "pause"
	}
	cmd := exec.Command(crashBin, args...)
	cmd.Env = append(baseEnv(stateDir), "AUTOSNAP_CRASH_AT="+c.point, "AUTOSNAP_CRASH_FILE="+flag, "AUTOSNAP_CRASH_MODE="+mode)
	cmd.Env = append(cmd.Env, c.env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return result{args: args, code: -1}, fmt.Errorf("starting %s: %w", crashBin, err)
	}
	pid := cmd.Process.Pid
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	wait := func(limit time.Duration) (result, bool) {
		select {
		case err := <-done:
			return finish(args, cmd, err, &out, &errb, start), true
		case <-time.After(limit):
			return result{}, false
		}
	}
	killAll := func() result {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		r, _ := wait(time.Minute)
		return r
	}

	// Wait for the point. In kill mode the process may be gone by the time the file
	// is seen; ended then holds its result.
	reached := func() bool {
		b, err := os.ReadFile(flag)
		return err == nil && len(b) > 0
	}
	var ended *result
	deadline := time.Now().Add(pointTimeout)
	for ended == nil && !reached() {
		select {
		case err := <-done:
			r := finish(args, cmd, err, &out, &errb, start)
			if !reached() {
				return r, fmt.Errorf("%w: %s ended without stopping at %s\n%s", errPointNotReached, r, c.point, r.output())
			}
			ended = &r
		case <-time.After(2 * time.Millisecond):
			if time.Now().After(deadline) {
				r := killAll()
				return r, fmt.Errorf("%w: autosnap did not stop at %s within %v\n%s", errPointNotReached, c.point, pointTimeout, r.output())
			}
		}
	}
	at := time.Now()
	if fi, err := os.Stat(flag); err == nil {
		at = fi.ModTime()
	}
	t.Logf("crashtest: autosnap (pid %d) reached %s after %v (seen %v later)", pid, c.point, at.Sub(start).Round(time.Millisecond), time.Since(at).Round(time.Microsecond))
	if ended != nil && c.how != killAtPoint {
		return *ended, fmt.Errorf("autosnap reached %s but ended by itself (%s) instead of waiting there", c.point, ended)
	}

	switch c.how {
	case killAtPoint:
		r, ok := result{}, true
		if ended != nil {
			r = *ended
		} else {
			r, ok = wait(time.Minute)
		}
		if !ok {
			r = killAll()
			return r, fmt.Errorf("autosnap reached %s but did not kill itself within a minute", c.point)
		}
		_ = syscall.Kill(-pid, syscall.SIGKILL) // what it started in its group
		if r.signal != syscall.SIGKILL {
			return r, fmt.Errorf("autosnap reached %s but ended with %s instead of SIGKILL\n%s", c.point, r, r.output())
		}
		return r, nil
	case pauseThenKill:
		var actErr error
		if c.atPoint != nil {
			actErr = c.atPoint(&paused{pid: pid, point: c.point, at: at})
		}
		if c.killGroup {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		} else {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		r, ok := wait(time.Minute)
		if !ok {
			r = killAll()
			return r, fmt.Errorf("autosnap did not die of SIGKILL at %s", c.point)
		}
		if actErr != nil {
			return r, fmt.Errorf("at %s: %w", c.point, actErr)
		}
		return r, nil
	case restartAtPoint:
		var actErr error
		if c.atPoint != nil {
			actErr = c.atPoint(&paused{pid: pid, point: c.point, at: at})
		}
		if actErr == nil {
			actErr = restart()
		}
		// Let it carry on (or, when the restart failed, end it).
		if err := os.Remove(flag); err != nil {
			actErr = errors.Join(actErr, err)
		}
		if actErr != nil {
			r := killAll()
			return r, fmt.Errorf("at %s: %w", c.point, actErr)
		}
		r, ok := wait(3 * time.Minute)
		if !ok {
			r = killAll()
			return r, fmt.Errorf("autosnap hung for 3 minutes after the libvirtd restart at %s (killed)\n%s", c.point, r.output())
		}
		t.Logf("crashtest: after the libvirtd restart the interrupted run ended: %s\n%s", r, r.output())
		return r, nil
	}
	return result{}, fmt.Errorf("unknown interruption %d", c.how)
}

// restartLibvirtd restarts the daemon with scripts/restart-libvirtd.sh (stop, start the
// way scripts/start-libvirt.sh does, wait until `virsh list` answers) and replaces the
// bed's connection, which the restart closed, with a new one.
func restartLibvirtd(t testing.TB, bed *testbed.Bed) error {
	t.Helper()
	start := time.Now()
	// The script bounds its own waits (about 2 minutes); cutting it off between the
	// stop and the start would leave the machine without a daemon.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", filepath.Join(moduleRoot, "scripts", "restart-libvirtd.sh")).CombinedOutput()
	if err != nil {
		return fmt.Errorf("restarting libvirtd: %w\n%s", err, out)
	}
	u, _ := url.Parse(testbed.URI)
	conn, err := libvirt.ConnectToURI(u)
	if err != nil {
		return fmt.Errorf("reconnecting to %s after the restart: %w", testbed.URI, err)
	}
	old := bed.Conn
	bed.Conn = conn
	// The old connection is dead; closing it must not hold the test up.
	go func() { _ = old.Disconnect() }()
	t.Logf("crashtest: libvirtd restarted in %v", time.Since(start).Round(time.Millisecond))
	return nil
}

// child is a process autosnap started.
type child struct {
	pid  int
	comm string
}

// childrenOf lists the live children of pid.
func childrenOf(pid int) []child {
	entries, _ := os.ReadDir("/proc")
	var out []child
	for _, e := range entries {
		cpid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, ppid, state, ok := procStat(cpid)
		if ok && ppid == pid && state != 'Z' {
			out = append(out, child{cpid, comm})
		}
	}
	return out
}

// procStat reads a process's command name, parent and state from /proc.
func procStat(pid int) (comm string, ppid int, state byte, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0, 0, false
	}
	open, closing := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open || closing+4 > len(b) {
		return "", 0, 0, false
	}
	comm = string(b[open+1 : closing])
	fields := strings.Fields(string(b[closing+2:]))
	if len(fields) < 2 {
		return "", 0, 0, false
	}
	ppid, _ = strconv.Atoi(fields[1])
	return comm, ppid, fields[0][0], true
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	_, _, state, ok := procStat(pid)
	return ok && state != 'Z'
}

// bytesWritten is the wchar of /proc/pid/io: what the process wrote so far.
func bytesWritten(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "wchar: "); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("no wchar in /proc/%d/io", pid)
}

// findChild waits up to limit for a child of pid named comm.
func findChild(pid int, comm string, limit time.Duration) (int, error) {
	deadline := time.Now().Add(limit)
	for {
		for _, c := range childrenOf(pid) {
			if c.comm == comm {
				return c.pid, nil
			}
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("autosnap (pid %d) has no %s child process", pid, comm)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
