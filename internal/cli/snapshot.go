package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/report"
	"github.com/autosnap/autosnap/internal/selector"
)

// newSnapshotCommand groups the virsh-style snapshot lifecycle commands.
func newSnapshotCommand(g *GlobalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Manage individual snapshots (virsh parity): create, list, info, revert, delete, chain …",
		Long: `Manage the snapshots of one guest, like virsh snapshot-*.

VM is one guest: its exact name (which may contain commas) or UUID, else a
--vmid style selection (id, %part% …) that selects exactly one guest. These
commands act on any snapshot, autosnap's or not.

Commands that change a guest (create, delete, revert, edit, redefine, current
NAME, chain collapse) hold the guest's lock, the one snap and clean take, so
they never run inside another autosnap run on the same guest: they wait up to
--timeout for it, then fail (exit 1) naming the process that holds it.

A snapshot whose description is not exactly what autosnap (or cv4pve-autosnap)
writes is a user snapshot: snap and clean never count or remove it, so editing
its note keeps it. snapshot protect keeps one of autosnap's own for good.

With -o text, commands that print one value (parent, current, dumpxml, list
--name) print it plainly for scripts; the other formats print a table or JSON.`,
	}
	cmd.AddCommand(newSnapshotCreateCommand(g), newSnapshotListCommand(g), newSnapshotInfoCommand(g),
		newSnapshotParentCommand(g), newSnapshotCurrentCommand(g), newSnapshotDumpXMLCommand(g),
		newSnapshotEditCommand(g), newSnapshotRedefineCommand(g), newSnapshotDeleteCommand(g),
		newSnapshotChainCommand(g), newSnapshotRevertCommand(g), newSnapshotProtectCommand(g), newSnapshotUnprotectCommand(g))
	return cmd
}

// snapshotSession is a connection and the one guest a snapshot command works on.
type snapshotSession struct {
	d     driver.Driver
	guest driver.Guest
	// member is the driver of the guest's host: capabilities are asked of it, since a
	// fleet forwards only the core.
	member driver.Driver
	// unlock releases the guest's lock when the session holds it.
	unlock func()
}

// openGuest connects and resolves vm to exactly one guest, for a command that only
// reads: a guest named exactly vm (or with that UUID) first, so that names with commas
// work, else vm read as a --vmid selection. No match exits 1; several matches are a
// usage error.
func (g *GlobalOptions) openGuest(ctx context.Context, vm string) (*snapshotSession, error) {
	return g.session(ctx, vm, true, false)
}

// changeGuest is openGuest for a command that changes the guest or its snapshots: it
// also holds the guest's cross-process lock (see lock) until Close.
func (g *GlobalOptions) changeGuest(ctx context.Context, vm string) (*snapshotSession, error) {
	return g.session(ctx, vm, true, true)
}

// session connects and resolves vm: with grammar as openGuest does, without it only as
// an exact name, UUID or numeric id. With lock it takes the guest's lock.
func (g *GlobalOptions) session(ctx context.Context, vm string, grammar, lock bool) (*snapshotSession, error) {
	if strings.TrimSpace(g.VMID) != "" {
		return nil, usage(errors.New("snapshot commands take the guest as their VM argument, not --vmid"))
	}
	d, err := g.connect(ctx)
	if err != nil {
		return nil, err
	}
	gu, err := g.resolveGuest(ctx, d, vm, grammar)
	if err != nil {
		d.Close()
		return nil, err
	}
	s := &snapshotSession{d: d, guest: gu, member: d}
	if f, ok := d.(interface {
		Member(driver.Guest) (driver.Driver, error)
	}); ok {
		if m, err := f.Member(s.guest); err == nil {
			s.member = m
		}
	}
	if lock {
		if err := s.lock(ctx, g); err != nil {
			d.Close()
			return nil, err
		}
	}
	return s, nil
}

// resolveGuest finds the one guest vm names; see session.
func (g *GlobalOptions) resolveGuest(ctx context.Context, d driver.Driver, vm string, grammar bool) (driver.Guest, error) {
	lctx, cancel := context.WithTimeout(ctx, g.timeout())
	all, err := d.Guests(lctx)
	cancel()
	if err != nil {
		return driver.Guest{}, err
	}
	found := selector.Exact(all, vm)
	switch {
	case len(found) > 0:
	case grammar:
		sel, err := selector.Parse(vm)
		if err != nil {
			return driver.Guest{}, usage(fmt.Errorf("VM %q is no guest's name, nor a selection: %w", vm, err))
		}
		if needsTags(sel) {
			if err := g.loadTags(ctx, d, all); err != nil {
				return driver.Guest{}, err
			}
		}
		res, err := sel.Select(all)
		if err != nil {
			return driver.Guest{}, fmt.Errorf("VM %q: %w", vm, err)
		}
		found = res.Guests
	default:
		if id, err := strconv.Atoi(vm); err == nil && id > 0 {
			for _, gu := range all {
				if gu.ID == id {
					found = append(found, gu)
				}
			}
		}
		if len(found) == 0 {
			return driver.Guest{}, fmt.Errorf("no guest named %q on %s (list them with: autosnap vm list): %w", vm, g.Host, selector.ErrNoMatch)
		}
	}
	if n := len(found); n > 1 {
		var which []string
		for _, gu := range found {
			which = append(which, fmt.Sprintf("%s on %s (%s)", gu.Name, gu.Node, gu.UUID))
		}
		return driver.Guest{}, usage(fmt.Errorf("VM %q matches %d guests: %s; name exactly one, e.g. by UUID", vm, n, strings.Join(which, ", ")))
	}
	return found[0], nil
}

// lock takes the guest's cross-process lock, the one snap and clean take for each
// guest, waiting up to --timeout for another run to release it. Every command that
// changes a guest or its snapshots takes it (through changeGuest) before it reads
// what it acts on, so a cron run never interleaves with a manual delete or revert.
func (s *snapshotSession) lock(ctx context.Context, g *GlobalOptions) error {
	lctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	unlock, err := engine.LockGuest(lctx, engine.DefaultLockDir(), s.guest.Key())
	if err != nil {
		return fmt.Errorf("guest %s: %w", s.guest.Name, err)
	}
	s.unlock = unlock
	return nil
}

// Close releases the guest's lock, if held, and the connection.
func (s *snapshotSession) Close() {
	if s.unlock != nil {
		s.unlock()
		s.unlock = nil
	}
	s.d.Close()
}

// mergeCtx bounds a command that may merge images (delete, collapse): by --timeout in
// total, or, for a driver that bounds merges by progress (driver.StallBounded), only
// by ctx, since that driver gives up itself when a merge stalls for --timeout.
func (s *snapshotSession) mergeCtx(ctx context.Context, g *GlobalOptions) (context.Context, context.CancelFunc) {
	if sb, ok := s.member.(driver.StallBounded); ok && sb.StallBounded() {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, g.timeout())
}

// capability returns the guest's driver as T, or a usage error naming what is missing.
func capability[T any](s *snapshotSession, what string) (T, error) {
	c, ok := s.member.(T)
	if !ok {
		var zero T
		return zero, usage(fmt.Errorf("the %s driver cannot %s: %w", s.member.Name(), what, driver.ErrUnsupported))
	}
	return c, nil
}

// findSnapshot returns the named snapshot of the guest, or the current one for "".
func (s *snapshotSession) findSnapshot(ctx context.Context, g *GlobalOptions, name string) (driver.Snapshot, []driver.Snapshot, error) {
	lctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	snaps, err := s.d.Snapshots(lctx, s.guest)
	if err != nil {
		return driver.Snapshot{}, nil, err
	}
	for _, sn := range snaps {
		if (name == "" && sn.Current) || (name != "" && sn.Name == name) {
			return sn, snaps, nil
		}
	}
	if name == "" {
		return driver.Snapshot{}, snaps, fmt.Errorf("guest %s has no current snapshot: %w", s.guest.Name, driver.ErrNotFound)
	}
	return driver.Snapshot{}, snaps, fmt.Errorf("guest %s has no snapshot %q (see: autosnap snapshot list %s): %w", s.guest.Name, name, s.guest.Name, driver.ErrNotFound)
}

// messages is where a command's human-readable lines go: stderr when stdout carries
// JSON, so that stdout stays parseable.
func (g *GlobalOptions) messages() io.Writer {
	if g.machine() {
		return g.stderr
	}
	return g.stdout
}

var actionColumns = []report.Column{
	{Header: "VM NAME", Key: "vmname"}, {Header: "SNAPSHOT", Key: "snapshot"}, {Header: "ACTION", Key: "action"},
}

// printActions reports what a changing command did: plain lines with -o text, a
// table (vmname, snapshot, action) in the other formats.
func (g *GlobalOptions) printActions(vm string, rows [][2]string) error {
	if g.format() == report.FormatText {
		for _, r := range rows {
			fmt.Fprintf(g.stdout, "%s: snapshot %s %s\n", vm, r[0], r[1])
		}
		return nil
	}
	t := report.Table{Columns: actionColumns}
	for _, r := range rows {
		t.Rows = append(t.Rows, []any{vm, r[0], r[1]})
	}
	return report.Render(g.stdout, g.format(), t)
}

// progressPrinter shows merge progress: one updating line on a terminal, a plain line
// every 10% otherwise (logs, pipes).
type progressPrinter struct {
	w    io.Writer
	tty  bool
	mu   sync.Mutex
	last map[string]int
}

func (g *GlobalOptions) newProgress() *progressPrinter {
	w := g.messages()
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &progressPrinter{w: w, tty: tty, last: map[string]int{}}
}

func (p *progressPrinter) report(disk string, done, total uint64) {
	if total == 0 {
		return
	}
	pct := int(min(done, total) * 100 / total)
	p.mu.Lock()
	defer p.mu.Unlock()
	last, seen := p.last[disk]
	if p.tty {
		if !seen || pct != last {
			fmt.Fprintf(p.w, "\r%s: merging %3d%%", disk, pct)
			if pct == 100 {
				fmt.Fprintln(p.w)
			}
		}
		p.last[disk] = pct
		return
	}
	if seen && pct < last {
		seen = false // the next job on the same disk starts again at 0%
	}
	step := pct / 10 * 10
	if seen && step <= last {
		return
	}
	p.last[disk] = step
	fmt.Fprintf(p.w, "%s: merging %d%%\n", disk, step)
}

// done ends a terminal progress line that did not reach 100%.
func (p *progressPrinter) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty {
		for _, v := range p.last {
			if v != 100 {
				fmt.Fprintln(p.w)
				break
			}
		}
	}
	p.last = map[string]int{}
}
