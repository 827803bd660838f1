package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/report"
)

// SnapshotListOptions are the flags of `snapshot list`.
type SnapshotListOptions struct {
	Tree, Parent, Roots, Leaves, NoLeaves bool
	From                                  string
	Descendants, Current                  bool
	Internal, External                    bool
	DiskOnly, Active, Inactive            bool
	Name                                  bool
}

func newSnapshotListCommand(g *GlobalOptions) *cobra.Command {
	o := &SnapshotListOptions{}
	cmd := &cobra.Command{
		Use:   "list VM",
		Short: "List a guest's snapshots, oldest first, with filters (virsh snapshot-list)",
		Long: `List a guest's snapshots, oldest first (depth first with --tree).

Filters combine (all must hold): --roots, --leaves/--no-leaves, --from NAME
(its children; all its descendants with --descendants), --current,
--internal/--external (mixed snapshots count as external), and the guest's
state when the snapshot was taken: --disk-only (disks of a running guest),
--active (running, with RAM), --inactive (shut off).

--tree shows the hierarchy: names indented under their parents in the table
formats; JSON and CSV keep the rows in tree order with their parent field.
--name prints only names (one per line with -o text).

JSON keys: name, time, parent, current, state (guest state at snapshot time:
running, paused, shutoff, disk-snapshot), location, vmstate, disk_only,
consistency (quiesced, crash, offline, memory; "" unknown), autosnap (made by
autosnap: retention manages it), description (without the consistency line
autosnap records in it), disks (name, snapshot, file), incomplete (why the
snapshot's data is not whole, e.g. a merge was interrupted: it cannot be
reverted to; "" when whole). The table formats add an INCOMPLETE column when
a listed snapshot is not whole.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSnapshotList(cmd.Context(), g, o, args[0])
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.Tree, "tree", false, "show the hierarchy")
	f.BoolVar(&o.Parent, "parent", false, "add a PARENT column")
	f.BoolVar(&o.Roots, "roots", false, "only snapshots without a parent")
	f.BoolVar(&o.Leaves, "leaves", false, "only snapshots without children")
	f.BoolVar(&o.NoLeaves, "no-leaves", false, "only snapshots with children")
	f.StringVar(&o.From, "from", "", "only the children of this snapshot")
	f.BoolVar(&o.Descendants, "descendants", false, "with --from: all descendants, not just children")
	f.BoolVar(&o.Current, "current", false, "only the current snapshot")
	f.BoolVar(&o.Internal, "internal", false, "only internal snapshots")
	f.BoolVar(&o.External, "external", false, "only external snapshots")
	f.BoolVar(&o.DiskOnly, "disk-only", false, "only disk-only snapshots of a running guest")
	f.BoolVar(&o.Active, "active", false, "only snapshots of a running guest with its RAM")
	f.BoolVar(&o.Inactive, "inactive", false, "only snapshots of a shut-off guest")
	f.BoolVar(&o.Name, "name", false, "names only")
	return cmd
}

// snapTree indexes snapshots by name and parent.
type snapTree struct {
	byName   map[string]driver.Snapshot
	children map[string][]string // "" holds the roots; oldest first
}

func newSnapTree(snaps []driver.Snapshot) *snapTree {
	t := &snapTree{byName: map[string]driver.Snapshot{}, children: map[string][]string{}}
	for _, s := range snaps {
		t.byName[s.Name] = s
	}
	for _, s := range snaps {
		p := s.Parent
		if _, ok := t.byName[p]; !ok {
			p = ""
		}
		t.children[p] = append(t.children[p], s.Name)
	}
	return t
}

func (t *snapTree) descendants(name string) []string {
	var out []string
	for _, c := range t.children[name] {
		out = append(out, c)
		out = append(out, t.descendants(c)...)
	}
	return out
}

// filterSnapshots applies the list filters; the result keeps snaps' order.
func filterSnapshots(snaps []driver.Snapshot, o *SnapshotListOptions) ([]driver.Snapshot, error) {
	t := newSnapTree(snaps)
	var from map[string]bool
	if o.From != "" {
		if _, ok := t.byName[o.From]; !ok {
			return nil, fmt.Errorf("--from %s: no such snapshot: %w", o.From, driver.ErrNotFound)
		}
		from = map[string]bool{}
		names := t.children[o.From]
		if o.Descendants {
			names = t.descendants(o.From)
		}
		for _, n := range names {
			from[n] = true
		}
	}
	var out []driver.Snapshot
	for _, s := range snaps {
		kids := len(t.children[s.Name])
		switch {
		case from != nil && !from[s.Name],
			o.Roots && s.Parent != "",
			o.Leaves && kids > 0,
			o.NoLeaves && kids == 0,
			o.Current && !s.Current,
			o.Internal && s.Location != driver.LocationInternal,
			o.External && s.Location == driver.LocationInternal:
			continue
		}
		if o.DiskOnly || o.Active || o.Inactive {
			st := s.GuestState
			ok := (o.DiskOnly && (s.DiskOnly || st == "disk-snapshot")) ||
				(o.Active && !s.DiskOnly && (st == "running" || st == "paused" || st == "blocked")) ||
				(o.Inactive && st == "shutoff")
			if !ok {
				continue
			}
		}
		out = append(out, s)
	}
	return out, nil
}

func runSnapshotList(ctx context.Context, g *GlobalOptions, o *SnapshotListOptions, vm string) error {
	switch {
	case o.Leaves && o.NoLeaves:
		return usage(errors.New("--leaves and --no-leaves exclude each other"))
	case o.Internal && o.External:
		return usage(errors.New("--internal and --external exclude each other"))
	case o.Descendants && o.From == "":
		return usage(errors.New("--descendants needs --from NAME"))
	case o.Roots && o.From != "":
		return usage(errors.New("--roots and --from exclude each other"))
	case o.Tree && o.Name:
		return usage(errors.New("--tree and --name exclude each other"))
	}
	s, err := g.openGuest(ctx, vm)
	if err != nil {
		return err
	}
	defer s.Close()
	lctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	snaps, err := s.d.Snapshots(lctx, s.guest)
	if err != nil {
		return err
	}
	sel, err := filterSnapshots(snaps, o)
	if err != nil {
		return err
	}
	if o.Name {
		if g.format() == report.FormatText {
			for _, sn := range sel {
				fmt.Fprintln(g.stdout, sn.Name)
			}
			return nil
		}
		t := report.Table{Columns: []report.Column{{Header: "NAME", Key: "name"}}}
		for _, sn := range sel {
			t.Rows = append(t.Rows, []any{sn.Name})
		}
		return report.Render(g.stdout, g.format(), t)
	}
	return g.renderSnapshots(s.guest, sel, listView{tree: o.Tree, parent: o.Parent})
}

type listView struct {
	tree, parent bool
}

// treeOrder returns snaps depth first, each with its tree-drawing prefix. A snapshot
// whose parent is not among snaps is drawn as a root.
func treeOrder(snaps []driver.Snapshot, unicode bool) ([]driver.Snapshot, []string) {
	t := newSnapTree(snaps)
	mid, last, bar, gap := "|- ", "`- ", "|  ", "   "
	if unicode {
		mid, last, bar, gap = "├─ ", "└─ ", "│  ", "   "
	}
	var out []driver.Snapshot
	var prefixes []string
	var walk func(name, indent string, root, isLast bool)
	walk = func(name, indent string, root, isLast bool) {
		prefix, next := "", ""
		if !root {
			prefix, next = indent+mid, indent+bar
			if isLast {
				prefix, next = indent+last, indent+gap
			}
		}
		out = append(out, t.byName[name])
		prefixes = append(prefixes, prefix)
		kids := t.children[name]
		for i, c := range kids {
			walk(c, next, false, i == len(kids)-1)
		}
	}
	for _, r := range t.children[""] {
		walk(r, "", true, false)
	}
	return out, prefixes
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(l)
}

func diskCell(ds []driver.SnapshotDisk) []string {
	out := []string{}
	for _, d := range ds {
		c := d.Name + ":" + d.Snapshot
		if d.File != "" {
			c += ":" + d.File
		}
		out = append(out, c)
	}
	return out
}

// renderSnapshots prints snapshots in the -o format: a compact table in the table
// formats, every field in JSON and CSV.
func (g *GlobalOptions) renderSnapshots(gu driver.Guest, snaps []driver.Snapshot, v listView) error {
	f := g.format()
	prefixes := make([]string, len(snaps))
	if v.tree {
		snaps, prefixes = treeOrder(snaps, f == report.FormatUnicode || f == report.FormatUnicodeAlt || f == report.FormatHTML || f == report.FormatMarkdown)
	}
	full := g.machine() || f == report.FormatCSV
	var t report.Table
	if full {
		t.Columns = []report.Column{
			{Header: "NAME", Key: "name"}, {Header: "TIME", Key: "time"}, {Header: "PARENT", Key: "parent"},
			{Header: "CURRENT", Key: "current"}, {Header: "STATE", Key: "state"}, {Header: "LOCATION", Key: "location"},
			{Header: "VM STATE", Key: "vmstate"}, {Header: "DISK ONLY", Key: "disk_only"}, {Header: "CONSISTENCY", Key: "consistency"},
			{Header: "AUTOSNAP", Key: "autosnap"}, {Header: "DESCRIPTION", Key: "description"}, {Header: "DISKS", Key: "disks"},
			{Header: "INCOMPLETE", Key: "incomplete"}, {Header: "PROTECTED", Key: "protected"},
		}
		for _, s := range snaps {
			var tm any = s.Created.UTC()
			if !g.machine() {
				tm = s.Created.Local().Format("2006-01-02 15:04:05")
			}
			var disks any = diskCell(s.Disks)
			if g.machine() {
				ds := s.Disks
				if ds == nil {
					ds = []driver.SnapshotDisk{}
				}
				disks = ds
			}
			t.Rows = append(t.Rows, []any{s.Name, tm, s.Parent, s.Current, s.GuestState, string(s.Location), s.Memory,
				s.DiskOnly, string(s.Consistency), naming.IsOurs(s.Description), shownDescription(s.Description), disks, s.Incomplete, s.Protected})
		}
		return report.Render(g.stdout, f, t)
	}
	t.Columns = []report.Column{{Header: "NAME", Key: "name"}, {Header: "TIME", Key: "time"}}
	if v.parent {
		t.Columns = append(t.Columns, report.Column{Header: "PARENT", Key: "parent"})
	}
	t.Columns = append(t.Columns, report.Column{Header: "STATE", Key: "state"}, report.Column{Header: "LOCATION", Key: "location"},
		report.Column{Header: "CURRENT", Key: "current"}, report.Column{Header: "DESCRIPTION", Key: "description"})
	// The column appears only when a snapshot is not whole, and then says why.
	incomplete := slices.ContainsFunc(snaps, func(s driver.Snapshot) bool { return s.Incomplete != "" })
	if incomplete {
		t.Columns = append(t.Columns, report.Column{Header: "INCOMPLETE", Key: "incomplete"})
	}
	// Likewise, the column appears only when a snapshot is protected.
	protected := slices.ContainsFunc(snaps, func(s driver.Snapshot) bool { return s.Protected })
	if protected {
		t.Columns = append(t.Columns, report.Column{Header: "PROTECTED", Key: "protected"})
	}
	for i, s := range snaps {
		row := []any{prefixes[i] + s.Name, s.Created.Local().Format("2006-01-02 15:04:05")}
		if v.parent {
			row = append(row, s.Parent)
		}
		row = append(row, s.GuestState, string(s.Location), s.Current, firstLine(s.Description))
		if incomplete {
			row = append(row, s.Incomplete)
		}
		if protected {
			row = append(row, s.Protected)
		}
		t.Rows = append(t.Rows, row)
	}
	return report.Render(g.stdout, f, t)
}

func newSnapshotInfoCommand(g *GlobalOptions) *cobra.Command {
	var current bool
	cmd := &cobra.Command{
		Use:   "info VM [NAME | --current]",
		Short: "Show one snapshot: state, location, parent, children, disks (virsh snapshot-info)",
		Long: `Show one snapshot. The table formats print one FIELD/VALUE line per field; JSON
and CSV one row with the keys of snapshot list plus vmname, children and
descendants.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := nameOrCurrent(args, current)
			if err != nil {
				return err
			}
			return runSnapshotInfo(cmd.Context(), g, args[0], name)
		},
	}
	cmd.Flags().BoolVar(&current, "current", false, "the current snapshot")
	return cmd
}

// nameOrCurrent returns NAME from args[1], or "" for --current; exactly one is needed.
func nameOrCurrent(args []string, current bool) (string, error) {
	switch {
	case len(args) == 2 && current:
		return "", usage(errors.New("give NAME or --current, not both"))
	case len(args) == 2:
		return args[1], nil
	case current:
		return "", nil
	}
	return "", usage(errors.New("give NAME or --current"))
}

func runSnapshotInfo(ctx context.Context, g *GlobalOptions, vm, name string) error {
	s, err := g.openGuest(ctx, vm)
	if err != nil {
		return err
	}
	defer s.Close()
	sn, all, err := s.findSnapshot(ctx, g, name)
	if err != nil {
		return err
	}
	t := newSnapTree(all)
	kids, desc := t.children[sn.Name], t.descendants(sn.Name)
	if kids == nil {
		kids = []string{}
	}
	f := g.format()
	if g.machine() || f == report.FormatCSV {
		var tm any = sn.Created.UTC()
		var disks any = sn.Disks
		if !g.machine() {
			tm = sn.Created.Local().Format("2006-01-02 15:04:05")
			disks = diskCell(sn.Disks)
		} else if sn.Disks == nil {
			disks = []driver.SnapshotDisk{}
		}
		tb := report.Table{Columns: []report.Column{
			{Header: "VM NAME", Key: "vmname"}, {Header: "NAME", Key: "name"}, {Header: "TIME", Key: "time"},
			{Header: "PARENT", Key: "parent"}, {Header: "CHILDREN", Key: "children"}, {Header: "DESCENDANTS", Key: "descendants"},
			{Header: "CURRENT", Key: "current"}, {Header: "STATE", Key: "state"}, {Header: "LOCATION", Key: "location"},
			{Header: "VM STATE", Key: "vmstate"}, {Header: "DISK ONLY", Key: "disk_only"}, {Header: "CONSISTENCY", Key: "consistency"},
			{Header: "AUTOSNAP", Key: "autosnap"}, {Header: "DESCRIPTION", Key: "description"}, {Header: "DISKS", Key: "disks"},
			{Header: "INCOMPLETE", Key: "incomplete"}, {Header: "PROTECTED", Key: "protected"},
		}}
		tb.Rows = append(tb.Rows, []any{s.guest.Name, sn.Name, tm, sn.Parent, kids, len(desc), sn.Current, sn.GuestState,
			string(sn.Location), sn.Memory, sn.DiskOnly, string(sn.Consistency), naming.IsOurs(sn.Description), shownDescription(sn.Description),
			disks, sn.Incomplete, sn.Protected})
		return report.Render(g.stdout, f, tb)
	}
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	tb := report.Table{Columns: []report.Column{{Header: "FIELD", Key: "field"}, {Header: "VALUE", Key: "value"}}}
	for _, kv := range [][2]string{
		{"Name", sn.Name}, {"Domain", s.guest.Name}, {"Current", yes(sn.Current)}, {"State", sn.GuestState},
		{"Location", string(sn.Location)}, {"Parent", orDash(sn.Parent)}, {"Children", strconv.Itoa(len(kids))},
		{"Descendants", strconv.Itoa(len(desc))}, {"Time", sn.Created.Local().Format("2006-01-02 15:04:05")},
		{"RAM", yes(sn.Memory)}, {"Consistency", orDash(string(sn.Consistency))},
		{"Incomplete", incompleteText(sn.Incomplete)},
		{"Managed by autosnap", yes(naming.IsOurs(sn.Description))}, {"Protected", yes(sn.Protected)},
		{"Description", shownDescription(sn.Description)},
		{"Disks", strings.Join(diskCell(sn.Disks), "\n")},
	} {
		tb.Rows = append(tb.Rows, []any{kv[0], kv[1]})
	}
	return report.Render(g.stdout, f, tb)
}

// incompleteText is the info line for Snapshot.Incomplete.
func incompleteText(why string) string {
	if why == "" {
		return "no"
	}
	return "yes, not to be reverted to: " + why
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printValue prints one value per row: plainly with -o text, as a table otherwise.
func (g *GlobalOptions) printValue(cols []report.Column, row []any) error {
	if g.format() == report.FormatText {
		fmt.Fprintln(g.stdout, row[len(row)-1])
		return nil
	}
	return report.Render(g.stdout, g.format(), report.Table{Columns: cols, Rows: [][]any{row}})
}

func newSnapshotParentCommand(g *GlobalOptions) *cobra.Command {
	var current bool
	cmd := &cobra.Command{
		Use:   "parent VM [NAME | --current]",
		Short: "Print a snapshot's parent (virsh snapshot-parent); a root snapshot is an error",
		Long: `Print a snapshot's parent. -o text prints the name alone; the other formats a
row with name and parent. A snapshot without parent fails (exit 1).`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := nameOrCurrent(args, current)
			if err != nil {
				return err
			}
			s, err := g.openGuest(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer s.Close()
			sn, _, err := s.findSnapshot(cmd.Context(), g, name)
			if err != nil {
				return err
			}
			if sn.Parent == "" {
				return fmt.Errorf("snapshot %s of %s has no parent: %w", sn.Name, s.guest.Name, driver.ErrNotFound)
			}
			return g.printValue([]report.Column{{Header: "NAME", Key: "name"}, {Header: "PARENT", Key: "parent"}}, []any{sn.Name, sn.Parent})
		},
	}
	cmd.Flags().BoolVar(&current, "current", false, "the current snapshot's parent")
	return cmd
}

func newSnapshotCurrentCommand(g *GlobalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "current VM [NAME]",
		Short: "Print the current snapshot, or make NAME current without reverting (virsh snapshot-current)",
		Long: `Without NAME print the current snapshot (the parent of the next one); no
current snapshot fails (exit 1). With NAME mark that snapshot current: only
the metadata changes (libvirt redefine with the current flag), not the guest.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			open := g.openGuest
			if len(args) == 2 {
				open = g.changeGuest
			}
			s, err := open(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer s.Close()
			if len(args) == 1 {
				sn, _, err := s.findSnapshot(cmd.Context(), g, "")
				if err != nil {
					return err
				}
				return g.printValue([]report.Column{{Header: "VM NAME", Key: "vmname"}, {Header: "CURRENT", Key: "current"}}, []any{s.guest.Name, sn.Name})
			}
			cs, err := capability[driver.CurrentSetter](s, "set the current snapshot")
			if err != nil {
				return err
			}
			if g.DryRun {
				fmt.Fprintf(g.messages(), "Dry run: %s would become the current snapshot of %s\n", args[1], s.guest.Name)
				return nil
			}
			cctx, cancel := context.WithTimeout(cmd.Context(), g.timeout())
			defer cancel()
			if err := cs.SetCurrent(cctx, s.guest, args[1]); err != nil {
				return err
			}
			return g.printActions(s.guest.Name, [][2]string{{args[1], "is current"}})
		},
	}
}

func newSnapshotDumpXMLCommand(g *GlobalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "dumpxml VM NAME",
		Short: "Print libvirt's XML of a snapshot, for snapshot redefine (virsh snapshot-dumpxml --security-info)",
		Long: `Print libvirt's XML of a snapshot, including the recorded domain definition with
its security-sensitive parts (graphics passwords): treat the output as a
secret. snapshot redefine takes it back, on this host or another one with the
same guest (same UUID). -o text prints the XML; JSON a row with name and xml.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.openGuest(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer s.Close()
			x, err := capability[driver.SnapshotXMLer](s, "show snapshot XML")
			if err != nil {
				return err
			}
			cctx, cancel := context.WithTimeout(cmd.Context(), g.timeout())
			defer cancel()
			raw, err := x.SnapshotXML(cctx, s.guest, args[1])
			if err != nil {
				return err
			}
			return g.printValue([]report.Column{{Header: "NAME", Key: "name"}, {Header: "XML", Key: "xml"}}, []any{args[1], strings.TrimRight(raw, "\n")})
		},
	}
}
