package cli

import (
	"bytes"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/autosnap/autosnap/internal/report"
)

// cvWriter turns the engine's per-guest lines into cv4pve-autosnap's, line by line,
// as the engine streams them (one guest at a time, in selection order):
//
//	----- VM 101 qemu shutoff (pve1/web) -----  →  ----- VM 101 qemu stopped -----
//	                                               (clean: ----- VM 101 qemu -----, as 2.1+
//	                                               also before a template's skip line)
//	Remove snapshot: NAME (reason)              →  Remove snapshot: NAME
//	ERROR: … task … failed: VM is locked        →  Error in task: VM is locked
//	ERROR: … still running …                    →  Error task in run... increase the timeout!
//	Skip VM …: cannot snapshot: mp0 is a bind mount … →  Skip VM Proxmox VE cannot snapshot it, bind mount or device: mp0
//	ERROR: … above --max-perc-storage …         →  Skip VM problem storage space out of N%
//	ERROR: … status unknown …                   →  Skip VM status unknown: node offline or not reachable
//	ERROR: other                                →  other (cv4pve prints the bare message)
//	WARNING: hook … exited with status N        →  (dropped: the runner printed Script return code: N)
//	VM execution 1.2s                           →  VM execution 00:00:01.2000000, after a success only
//
// Lines cv4pve has no counterpart of (the created snapshot's consistency, dry-run
// notes, kept snapshots, agent pings) are dropped; anything else passes unchanged, and
// a hook's output (framed by cvHookBegin and cvHookEnd) is never rewritten. cv4pve's
// agent hint is printed after the guest line unless the guest is skipped, for guests
// agentOff names.
type cvWriter struct {
	mu    sync.Mutex
	w     io.Writer
	clean bool // clean's guest line has no state
	// maxPerc is --max-perc-storage as cv4pve prints it.
	maxPerc string
	// agentOff holds the ids of the VMs whose agent option is off.
	agentOff map[string]bool
	// now, when set (tests), times each guest from its guest line to its end;
	// otherwise the engine's own measure is used (exact to the millisecond, and right
	// also for guests whose output the engine held back while others ran).
	now func() time.Time

	partial []byte
	// the current guest
	id      string
	start   time.Time
	failed  bool // failed or skipped: no "VM execution" line
	hint    bool // the agent hint is still due
	inGuest bool
	// verbatim is set between cvHookBegin and cvHookEnd: a hook's lines pass unchanged.
	verbatim bool
}

// cvHookBegin and cvHookEnd frame a hook's output (hook.Runner.Frame), so that its
// lines reach stdout exactly as the hook printed them, as cv4pve prints them, and are
// not taken for the engine's lines. cvWriter removes them.
const (
	cvHookBegin = "\x00autosnap: hook output begins\x00"
	cvHookEnd   = "\x00autosnap: hook output ends\x00"
)

var (
	cvGuestLine  = regexp.MustCompile(`^----- VM (\S+) (\S+) (\S+) \(.*\) -----$`)
	cvTaskFailed = regexp.MustCompile(`Proxmox VE task \S+ on node \S+ failed: (.*)$`)
	cvHookExit   = regexp.MustCompile(`^WARNING: hook script .* exited with status (\d+)$`)
	cvRemove     = regexp.MustCompile(`^Remove snapshot: (\S+)`)
	cvCannot     = regexp.MustCompile(`cannot snapshot: \S+ is a (?:bind mount|device mount|passthrough device) `)
	cvCannotDisk = regexp.MustCompile(`(?:: |, )(\S+) is a (?:bind mount|device mount|passthrough device) \(`)
)

// cvDropped matches the engine lines cv4pve has no counterpart of (and not lines a
// hook is likely to print).
var cvDropped = regexp.MustCompile(`^(Snapshot \S+ created \(|Snapshot \S+ was already gone$|Dry run: |Keep snapshot: \S+ \(|Guest agent not available \(|Filesystems frozen for )`)

func (c *cvWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.partial = append(c.partial, p...)
	for {
		i := bytes.IndexByte(c.partial, '\n')
		if i < 0 {
			break
		}
		line := string(c.partial[:i])
		c.partial = c.partial[i+1:]
		if err := c.line(line); err != nil {
			return len(p), err
		}
	}
	return len(p), nil
}

// Flush handles a last line without a newline.
func (c *cvWriter) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.partial) > 0 {
		line := string(c.partial)
		c.partial = nil
		if err := c.line(line); err != nil {
			return err
		}
	}
	return nil
}

func (c *cvWriter) emit(s string) error {
	_, err := io.WriteString(c.w, s+"\n")
	return err
}

// cvState is the guest state as Proxmox VE's status field spells it.
func cvState(s string) string {
	switch s {
	case "shutoff", "shutdown", "crashed":
		return "stopped"
	case "paused", "pmsuspended", "blocked":
		return "running"
	}
	return s
}

func (c *cvWriter) line(l string) error {
	switch {
	case l == cvHookBegin:
		c.verbatim = true
		// What cv4pve prints before any hook of the guest: the agent hint.
		return c.emitHint()
	case l == cvHookEnd:
		c.verbatim = false
		return nil
	case c.verbatim:
		return c.emit(l)
	}
	if m := cvGuestLine.FindStringSubmatch(l); m != nil {
		c.id, c.failed, c.inGuest = m[1], false, true
		if c.now != nil {
			c.start = c.now()
		}
		c.hint = c.agentOff[c.id]
		if c.clean {
			return c.emit(fmt.Sprintf("----- VM %s %s -----", m[1], m[2]))
		}
		return c.emit(fmt.Sprintf("----- VM %s %s %s -----", m[1], m[2], cvState(m[3])))
	}
	if strings.HasPrefix(l, "Skip VM ") {
		// cv4pve goes on to the next guest: no hint, no execution time.
		c.hint, c.failed = false, true
		if cvCannot.MatchString(l) {
			var keys []string
			for _, m := range cvCannotDisk.FindAllStringSubmatch(l, -1) {
				keys = append(keys, m[1])
			}
			l = "Skip VM Proxmox VE cannot snapshot it, bind mount or device: " + strings.Join(keys, ", ")
		}
	}
	if took, ok := strings.CutPrefix(l, "VM execution "); ok && c.inGuest {
		c.inGuest = false
		if c.clean || c.failed {
			return nil
		}
		d, err := time.ParseDuration(took)
		if c.now != nil {
			d, err = c.now().Sub(c.start), nil
		}
		if err != nil {
			return c.emit(l) // not the engine's format: shown as it is
		}
		return c.emit("VM execution " + report.CV4PVETimeSpan(d))
	}
	if cvDropped.MatchString(l) {
		return nil
	}
	if msg, ok := strings.CutPrefix(l, "ERROR: "); ok && c.inGuest {
		c.failed = true
		switch {
		case strings.Contains(msg, "above --max-perc-storage"):
			l = "Skip VM problem storage space out of " + c.maxPerc + "%"
		case strings.Contains(msg, "status unknown: its host"):
			c.hint = false
			l = "Skip VM status unknown: node offline or not reachable"
		case strings.Contains(msg, "was still running after"):
			l = "Error task in run... increase the timeout!"
		default:
			if m := cvTaskFailed.FindStringSubmatch(msg); m != nil {
				l = "Error in task: " + m[1]
			} else {
				l = msg
			}
		}
	}
	if err := c.emitHint(); err != nil {
		return err
	}
	if cvHookExit.MatchString(l) {
		return nil // the hook runner printed cv4pve's "Script return code: N" already
	}
	if m := cvRemove.FindStringSubmatch(l); m != nil {
		l = "Remove snapshot: " + m[1]
	}
	return c.emit(l)
}

// emitHint prints cv4pve's agent hint if it is still due for the current guest.
func (c *cvWriter) emitHint() error {
	if !c.hint {
		return nil
	}
	c.hint = false
	return c.emit("VM " + c.id + " consider enabling QEMU agent see https://pve.proxmox.com/wiki/Qemu-guest-agent")
}

// cvBool is a .NET bool as Console prints it.
func cvBool(b bool) string {
	if b {
		return "True"
	}
	return "False"
}

// cvPercent is --max-perc-storage as cv4pve prints its int.
func cvPercent(p float64) string { return strconv.FormatFloat(p, 'f', -1, 64) }
