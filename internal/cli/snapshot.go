package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/report"
	"github.com/autosnap/autosnap/internal/selector"
)

// newSnapshotCommand groups the virsh-style snapshot lifecycle commands.
func newSnapshotCommand(g *GlobalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Manage individual snapshots (virsh parity): create, list, info, revert, delete, chain …",
		Long: `Manage the snapshots of one guest, like virsh snapshot-*.

VM is one guest, given like a --vmid token (name, id, UUID, %part% …); it must
select exactly one guest. These commands act on any snapshot, autosnap's or not.
A snapshot whose description does not start with the line "autosnap" is a user
snapshot: snap and clean never count or remove it.

With -o text, commands that print one value (parent, current, dumpxml, list
--name) print it plainly for scripts; the other formats print a table or JSON.`,
	}
	cmd.AddCommand(newSnapshotCreateCommand(g), newSnapshotListCommand(g), newSnapshotInfoCommand(g),
		newSnapshotParentCommand(g), newSnapshotCurrentCommand(g), newSnapshotDumpXMLCommand(g),
		newSnapshotEditCommand(g), newSnapshotRedefineCommand(g), newSnapshotDeleteCommand(g),
		newSnapshotChainCommand(g), newSnapshotRevertCommand(g))
	return cmd
}

// snapshotSession is a connection and the one guest a snapshot command works on.
type snapshotSession struct {
	d     driver.Driver
	guest driver.Guest
	// member is the driver of the guest's host: capabilities are asked of it, since a
	// fleet forwards only the core.
	member driver.Driver
}

// openGuest connects and resolves vm, a --vmid-style selection, to exactly one guest.
// No match exits 1; several matches are a usage error.
func (g *GlobalOptions) openGuest(ctx context.Context, vm string) (*snapshotSession, error) {
	if strings.TrimSpace(g.VMID) != "" {
		return nil, usage(errors.New("snapshot commands take the guest as their VM argument, not --vmid"))
	}
	sel, err := selector.Parse(vm)
	if err != nil {
		return nil, usage(fmt.Errorf("VM %q: %w", vm, err))
	}
	d, err := g.connect(ctx)
	if err != nil {
		return nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	all, err := d.Guests(lctx)
	if err != nil {
		d.Close()
		return nil, err
	}
	res, err := sel.Select(all)
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("VM %q: %w", vm, err)
	}
	switch n := len(res.Guests); {
	case n == 0:
		d.Close()
		return nil, fmt.Errorf("VM %q matches no guest: %w", vm, selector.ErrNoMatch)
	case n > 1:
		var names []string
		for _, gu := range res.Guests {
			names = append(names, gu.Name)
		}
		d.Close()
		return nil, usage(fmt.Errorf("VM %q matches %d guests (%s); name exactly one", vm, n, strings.Join(names, ", ")))
	}
	s := &snapshotSession{d: d, guest: res.Guests[0], member: d}
	if f, ok := d.(interface {
		Member(driver.Guest) (driver.Driver, error)
	}); ok {
		if m, err := f.Member(s.guest); err == nil {
			s.member = m
		}
	}
	return s, nil
}

func (s *snapshotSession) Close() { s.d.Close() }

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
