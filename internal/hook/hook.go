// Package hook runs user hook scripts at the phases of a snap or clean job,
// with the environment variables of cv4pve-autosnap so existing scripts
// (template.sh, send-metrics.sh, ...) work unchanged.
//
// The engine decides when each phase happens and what the variables hold;
// this package only formats the variables and executes the script.
package hook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Phase is the value of CV4PVE_AUTOSNAP_PHASE / AUTOSNAP_PHASE.
//
// Order for one guest in snap: snap-create-pre, then for each expired
// snapshot snap-remove-pre followed by snap-remove-post or snap-remove-abort
// (an abort ends the guest's phases), then snap-create-post. A failed
// creation is reported by snap-create-abort instead of the rest. The whole
// snap job is framed by snap-job-start and snap-job-end; a clean job by
// clean-job-start and clean-job-end with snap-remove-* per removal in
// between. Skipped guests get no phase at all.
type Phase string

// The ten phases, spelled as cv4pve-autosnap spells them.
const (
	SnapJobStart    Phase = "snap-job-start"
	SnapJobEnd      Phase = "snap-job-end"
	SnapCreatePre   Phase = "snap-create-pre"
	SnapCreatePost  Phase = "snap-create-post"
	SnapCreateAbort Phase = "snap-create-abort"
	SnapRemovePre   Phase = "snap-remove-pre"
	SnapRemovePost  Phase = "snap-remove-post"
	SnapRemoveAbort Phase = "snap-remove-abort"
	CleanJobStart   Phase = "clean-job-start"
	CleanJobEnd     Phase = "clean-job-end"
)

// Phases returns all phases in cv4pve's enum order (clean-job-start = 0 ...
// snap-remove-abort = 9).
func Phases() []Phase {
	return []Phase{
		CleanJobStart, CleanJobEnd,
		SnapJobStart, SnapJobEnd,
		SnapCreatePre, SnapCreatePost, SnapCreateAbort,
		SnapRemovePre, SnapRemovePost, SnapRemoveAbort,
	}
}

// Env is the information passed to one hook invocation. Vars formats it
// verbatim; filling it with cv4pve's semantics is the caller's job:
//
//   - VMID, VMName, VMType are empty in the *-job-* phases. VMType is
//     "qemu" for KVM/QEMU guests (cv4pve also knows "lxc").
//   - Node is the hypervisor host of the guest (autosnap addition, exported
//     only as AUTOSNAP_NODE).
//   - Label and Keep are the --label and --keep of the job.
//   - SnapName is the snapshot being created (snap-create-*) or removed
//     (snap-remove-*); empty in job phases, including snap-job-end.
//   - VMState is --state in snap-job-* and snap-create-*; always false in
//     remove and clean phases.
//   - Duration is the guest's elapsed time including removals in
//     snap-create-post/abort, the removal's elapsed time in
//     snap-remove-post/abort, the whole job in *-job-end, and 0 otherwise.
//   - State is true on success. In pre phases cv4pve uses: snap-job-start
//     and snap-create-pre true, snap-remove-pre and clean-job-start false.
//     In *-job-end it is true only if every guest succeeded.
//   - Debug is --debug; DryRun is --dry-run (scripts are not run in a dry
//     run, so in practice it is false).
type Env struct {
	Phase  Phase
	VMID   string
	VMName string
	VMType string
	Node   string
	Label  string
	Keep   int
	// Retention is the calendar rules in force (e.g. "--keep-daily 7 --keep-weekly 4")
	// when snap/clean run with them instead of --keep; KEEP is then 0. Passed as
	// AUTOSNAP_RETENTION only (cv4pve-autosnap has no such variable).
	Retention string
	SnapName  string
	VMState   bool
	Duration  time.Duration
	State     bool
	Debug     bool
	DryRun    bool
	// Extra are further "KEY=value" entries appended as they are (backup phases pass
	// AUTOSNAP_BACKUP_*).
	Extra []string
}

// Vars returns the environment entries ("KEY=value") for the script: the
// cv4pve set CV4PVE_AUTOSNAP_{PHASE, VMID, VMNAME, VMTYPE, LABEL, KEEP,
// SNAP_NAME, VMSTATE, DURATION, STATE, DEBUG, DRY_RUN}, followed by the same
// set with the prefix AUTOSNAP_ plus AUTOSNAP_NODE.
//
// Booleans are "1" or "0". DURATION is in seconds as a decimal with a '.'
// separator and as many digits as needed (e.g. "0.5802054", "0", "12").
func (e Env) Vars() []string {
	kv := [][2]string{
		{"PHASE", string(e.Phase)},
		{"VMID", e.VMID},
		{"VMNAME", e.VMName},
		{"VMTYPE", e.VMType},
		{"LABEL", e.Label},
		{"KEEP", strconv.Itoa(e.Keep)},
		{"SNAP_NAME", e.SnapName},
		{"VMSTATE", flag(e.VMState)},
		{"DURATION", strconv.FormatFloat(e.Duration.Seconds(), 'f', -1, 64)},
		{"STATE", flag(e.State)},
		{"DEBUG", flag(e.Debug)},
		{"DRY_RUN", flag(e.DryRun)},
	}
	vars := make([]string, 0, 2*len(kv)+1)
	for _, p := range kv {
		vars = append(vars, "CV4PVE_AUTOSNAP_"+p[0]+"="+p[1])
	}
	for _, p := range kv {
		vars = append(vars, "AUTOSNAP_"+p[0]+"="+p[1])
	}
	vars = append(vars, "AUTOSNAP_NODE="+e.Node)
	if e.Retention != "" {
		vars = append(vars, "AUTOSNAP_RETENTION="+e.Retention)
	}
	return append(vars, e.Extra...)
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// Validate checks that path names an existing regular file (symlinks are
// followed) that the current user may execute. The errors are meant to be
// shown to the user as they are.
func Validate(path string) error {
	if path == "" {
		return errors.New("hook script: empty path")
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("hook script %s: not found", path)
	case err != nil:
		return fmt.Errorf("hook script %s: %w", path, err)
	case fi.IsDir():
		return fmt.Errorf("hook script %s: is a directory, not a file", path)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("hook script %s: not a regular file (%s)", path, fi.Mode().Type())
	case fi.Mode().Perm()&0o111 == 0:
		return fmt.Errorf("hook script %s: not executable: run chmod +x %s", path, path)
	}
	// The mode bits may grant execution to someone else only (e.g. 0744 owned
	// by another user); access(2) answers for the current user.
	const xOK = 1
	if err := syscall.Access(path, xOK); err != nil {
		return fmt.Errorf("hook script %s: not executable by the current user: %w", path, err)
	}
	return nil
}

// DefaultTimeout is used when Runner.Timeout is zero or negative.
const DefaultTimeout = 5 * time.Minute

// waitDelay bounds how long Run waits for the output pipe after the script
// exited or was killed: a background process that escaped the process group
// (setsid, daemon) may keep it open indefinitely.
const waitDelay = 2 * time.Second

// Runner executes one hook script. A nil Runner or one with an empty Path
// runs nothing. A Runner is safe for concurrent use (hooks of different
// guests may overlap with --max-parallel).
type Runner struct {
	// Path is the script file, absolute or relative to the working
	// directory. It is executed directly, never through a shell string, so its
	// #! line chooses the interpreter and spaces or shell metacharacters in
	// the name have no meaning. A file without a #! line that the kernel
	// refuses (ENOEXEC) runs as "/bin/sh PATH", as a shell would run it; a
	// binary the kernel refuses is an error. A name without '/' is not
	// searched in PATH.
	Path string
	// Timeout is how long one invocation may run before the script and every
	// process in its process group are killed. Zero means DefaultTimeout.
	Timeout time.Duration
	// MaxOutput caps what one invocation passes on to its output, stdout and stderr
	// together: the first half streams through as it is written, the last half is
	// kept and written when the script ends, and a line in between says how many
	// bytes were left out. Zero means DefaultMaxOutput.
	MaxOutput int64
	// CV4PVE runs the script as cv4pve-autosnap runs it (see runCV4PVE): through
	// `/bin/bash -c PATH`, stdout captured and written to out when the script ends,
	// after a line "Script return code: N" for a non-zero N, stderr to Stderr.
	CV4PVE bool
	// Stderr receives the script's stderr as it comes when CV4PVE is set (cv4pve
	// leaves it on the terminal); nil discards it. Concurrent hooks write to it
	// concurrently.
	Stderr io.Writer
	// Skip lists the phases Run does nothing for, because the caller runs them
	// itself at another point (cv4pve mode runs the job-start phase before it
	// selects guests).
	Skip []Phase
	// Frame, in CV4PVE mode, is written before and after each hook's output (when
	// there is any) in the same write, so that a line filter downstream can tell the
	// hook's lines from the program's and pass them on unchanged. Each should be a
	// whole line no script prints.
	Frame [2]string
}

// DefaultMaxOutput is the output cap used when Runner.MaxOutput is zero or negative.
const DefaultMaxOutput = 64 << 10

// ExitError is returned by Run when the script ran and exited with a non-zero status.
type ExitError struct {
	Path  string
	Phase Phase
	Code  int
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("hook script %s (phase %s) exited with status %d", e.Path, e.Phase, e.Code)
}

// Run executes the script once for env and waits for it.
//
// The script inherits the environment of autosnap plus env.Vars() (which
// override inherited variables of the same name), reads stdin from
// /dev/null, and writes both stdout and stderr to out (nil discards them) as
// they come, capped by MaxOutput; out always ends with a newline if the script
// wrote anything. The caller keeps parallel guests' output apart.
// The script runs in its own process group; on timeout or cancellation of
// ctx the whole group is killed with SIGKILL.
//
// The returned error describes a failed start, a non-zero exit status, a
// death by signal, a timeout or a cancellation; a non-zero exit status is an
// *ExitError. What a failure means is the caller's choice: by default the
// engine reports it and goes on, with --strict-hooks a failed *-pre hook
// aborts that guest's operation.
// Background processes that the script leaves running are not waited for:
// if they keep out open, Run returns shortly after the script exited and
// their further output is lost.
func (r *Runner) Run(ctx context.Context, env Env, out io.Writer) error {
	if r == nil || r.Path == "" || slices.Contains(r.Skip, env.Phase) {
		return nil
	}
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	runCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	path := r.Path
	if !strings.ContainsRune(path, '/') {
		// exec would otherwise look a bare name up in PATH.
		path = "./" + path
	}
	if out == nil {
		out = io.Discard
	}
	max := r.MaxOutput
	if max <= 0 {
		max = DefaultMaxOutput
	}
	what := fmt.Sprintf("hook script %s (phase %s)", r.Path, env.Phase)
	if r.CV4PVE {
		return r.runCV4PVE(ctx, runCtx, env, path, out, max, what, timeout)
	}
	cw := &cappedWriter{w: out, head: max - max/2, tailCap: int(max / 2)}
	err := run(runCtx, cw, env, path)
	if errors.Is(err, syscall.ENOEXEC) {
		// No #! line: do what a shell does with such a file (execvp, bash, dash) and
		// run it under /bin/sh — unless it is a binary the kernel cannot run, which
		// bash refuses rather than feeding to a shell.
		binary, berr := isBinary(path)
		if berr != nil {
			return fmt.Errorf("%s: %w", what, berr)
		}
		if binary {
			return fmt.Errorf("%s: cannot execute binary file: %w", what, err)
		}
		err = run(runCtx, cw, env, "/bin/sh", path)
	}
	cw.finish()
	return r.result(ctx, runCtx, err, env, what, timeout)
}

// result turns the error of a script's run into Run's result.
func (r *Runner) result(ctx, runCtx context.Context, err error, env Env, what string, timeout time.Duration) error {
	switch {
	case err == nil, errors.Is(err, exec.ErrWaitDelay):
		// ErrWaitDelay: the script succeeded but a leftover background
		// process still held the output open.
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("%s canceled: %w", what, ctx.Err())
	case errors.Is(runCtx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%s killed after timeout of %s", what, timeout)
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return fmt.Errorf("%s terminated by signal %s", what, ws.Signal())
		}
		return &ExitError{Path: r.Path, Phase: env.Phase, Code: exitErr.ExitCode()}
	}
	return fmt.Errorf("%s: %w", what, err)
}

// run executes argv in its own process group with the hook environment, stdin from
// /dev/null and stdout and stderr both into out, and waits for it.
func run(ctx context.Context, out io.Writer, env Env, argv ...string) error {
	// One writer value for both: exec then copies from a single pipe, so the
	// script's own ordering of stdout and stderr lines is kept.
	return runSplit(ctx, out, out, env, argv...)
}

// runSplit is run with stdout and stderr going to different writers.
func runSplit(ctx context.Context, stdout, stderr io.Writer, env Env, argv ...string) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env.Vars()...) // later duplicates win
	cmd.Stdin = nil                               // /dev/null
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// Negative pid: the whole group, so children of the script die too.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = waitDelay
	return cmd.Run()
}

// isBinary applies bash's test for a file that failed to execute with ENOEXEC: an ELF
// header, or a NUL byte in the first line of its first 80 bytes, means a binary.
func isBinary(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	sample := make([]byte, 80)
	n, err := io.ReadFull(f, sample)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return false, err
	}
	sample = sample[:n]
	if bytes.HasPrefix(sample, []byte("\x7fELF")) {
		return true, nil
	}
	if i := bytes.IndexByte(sample, '\n'); i >= 0 {
		sample = sample[:i]
	}
	return bytes.IndexByte(sample, 0) >= 0, nil
}

// cappedWriter passes the first head bytes on at once, keeps the last tailCap bytes
// after that in a ring, and counts what falls out of the ring. exec calls Write from
// one goroutine at a time; finish runs after the copying ended.
type cappedWriter struct {
	w        io.Writer
	head     int64 // bytes still to pass on at once
	tail     []byte
	tailCap  int
	start    int // ring start in tail once it is full
	omitted  int64
	last     byte
	anything bool
}

func (c *cappedWriter) Write(p []byte) (int, error) {
	n := len(p)
	if n == 0 {
		return 0, nil
	}
	c.anything = true
	if c.head > 0 {
		k := int(min(int64(len(p)), c.head))
		c.head -= int64(k)
		c.last = p[k-1]
		if _, err := c.w.Write(p[:k]); err != nil {
			return 0, err
		}
		p = p[k:]
	}
	for len(p) > 0 {
		if len(c.tail) < c.tailCap {
			k := min(len(p), c.tailCap-len(c.tail))
			c.tail = append(c.tail, p[:k]...)
			p = p[k:]
			continue
		}
		if c.tailCap == 0 {
			c.omitted += int64(len(p))
			break
		}
		// Full ring: overwrite the oldest bytes.
		k := min(len(p), c.tailCap-c.start)
		copy(c.tail[c.start:], p[:k])
		c.omitted += int64(k)
		c.start = (c.start + k) % c.tailCap
		p = p[k:]
	}
	return n, nil
}

// finish writes the kept tail, says how much was left out, and ends the output with
// a newline so the next line does not run into it. Errors writing to the caller's
// output are ignored: they must not turn a hook's success into a failure.
func (c *cappedWriter) finish() {
	if c.omitted > 0 {
		sep := ""
		if c.last != '\n' {
			sep = "\n"
		}
		fmt.Fprintf(c.w, "%s[… %d bytes of hook output not shown]\n", sep, c.omitted)
		c.last = '\n'
	}
	tail := append(c.tail[c.start:len(c.tail):len(c.tail)], c.tail[:c.start]...)
	if len(tail) > 0 {
		_, _ = c.w.Write(tail)
		c.last = tail[len(tail)-1]
	}
	if c.anything && c.last != '\n' {
		_, _ = c.w.Write([]byte{'\n'})
	}
}
