package cli

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/report"
)

// SnapshotCreateOptions are the flags of `snapshot create`.
type SnapshotCreateOptions struct {
	Description string
	DiskOnly    bool
	State       bool
	Quiesce     string
	Atomic      bool
	DiskSpecs   []string
	MemSpec     string
}

func newSnapshotCreateCommand(g *GlobalOptions) *cobra.Command {
	o := &SnapshotCreateOptions{}
	cmd := &cobra.Command{
		Use:   "create VM [NAME]",
		Short: "Take one snapshot of a guest (virsh snapshot-create-as)",
		Long: `Take one snapshot of a guest. NAME defaults to the current Unix time, as virsh does.

Without --description the snapshot is a user snapshot: snap and clean never
touch it. The description gets a last line "consistency: quiesced" (or crash,
offline, memory), as autosnap's own snapshots have, so that snapshot info and
list show how the disks were captured; only --description autosnap (nothing
more) hands the snapshot to retention, any other still makes a user snapshot. By default every disk gets an external overlay beside its image
(disk-only and atomic for a running guest; --state adds the RAM).

--diskspec DISK,snapshot=internal|external|no[,file=PATH] per disk:
  no        leave the disk out (swap, scratch)
  external  an overlay, at PATH if given
  internal  inside the qcow2 image; only for a shut-off guest whose disks are
            all qcow2 without overlays, and then for every disk: an internal
            snapshot inside an overlay would be lost when the overlay is merged,
            and one of a running guest pauses it while the RAM is saved.
--memspec [file=]PATH saves the RAM there (implies --state).
--atomic is always on (all disks or none); the flag exists for virsh parity.`,
		Example: `  autosnap snapshot create web1 before-upgrade --description "before the 2.0 upgrade"
  autosnap snapshot create db1 --diskspec vdb,snapshot=no --quiesce on`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 2 {
				name = args[1]
			}
			return runSnapshotCreate(cmd.Context(), g, o, args[0], name)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Description, "description", "", "description; unless it is exactly \"autosnap\" retention never touches it")
	f.BoolVar(&o.DiskOnly, "disk-only", false, "disks only, no RAM (the default)")
	f.BoolVar(&o.State, "state", false, "include the guest's RAM (running guests)")
	f.StringVar(&o.Quiesce, "quiesce", "auto", "freeze guest filesystems via the agent: auto, on, off")
	f.BoolVar(&o.Atomic, "atomic", true, "all disks or none (always on)")
	f.StringArrayVar(&o.DiskSpecs, "diskspec", nil, "DISK,snapshot=internal|external|no[,file=PATH] (repeatable)")
	f.StringVar(&o.MemSpec, "memspec", "", "[file=]PATH for the RAM (implies --state)")
	return cmd
}

// parseDiskSpec parses virsh's DISK,snapshot=KIND[,file=PATH][,driver=qcow2].
func parseDiskSpec(s string) (driver.DiskSpec, error) {
	parts := strings.Split(s, ",")
	ds := driver.DiskSpec{Name: strings.TrimSpace(parts[0]), Snapshot: "external"}
	if ds.Name == "" {
		return ds, fmt.Errorf("--diskspec %q: start with the disk, e.g. vdb,snapshot=no", s)
	}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		switch k {
		case "snapshot":
			if v != "internal" && v != "external" && v != "no" {
				return ds, fmt.Errorf("--diskspec %q: snapshot=%s: use internal, external or no", s, v)
			}
			ds.Snapshot = v
		case "file":
			ds.File = v
		case "driver":
			if v != "qcow2" {
				return ds, fmt.Errorf("--diskspec %q: overlays are qcow2", s)
			}
		default:
			return ds, fmt.Errorf("--diskspec %q: unknown key %q (snapshot, file, driver)", s, k)
		}
	}
	if ds.File != "" && ds.Snapshot != "external" {
		return ds, fmt.Errorf("--diskspec %q: file= only goes with snapshot=external", s)
	}
	return ds, nil
}

func runSnapshotCreate(ctx context.Context, g *GlobalOptions, o *SnapshotCreateOptions, vm, name string) error {
	q, err := engine.ParseQuiesce(o.Quiesce)
	if err != nil {
		return usage(err)
	}
	opts := driver.CreateOptions{Name: name, Description: o.Description, Memory: o.State}
	if name == "" {
		opts.Name = strconv.FormatInt(time.Now().Unix(), 10)
	}
	if strings.ContainsAny(opts.Name, "/\x00") || strings.TrimSpace(opts.Name) != opts.Name {
		return usage(fmt.Errorf("snapshot name %q: no slashes or surrounding spaces", opts.Name))
	}
	seen := map[string]bool{}
	for _, s := range o.DiskSpecs {
		ds, err := parseDiskSpec(s)
		if err != nil {
			return usage(err)
		}
		if seen[ds.Name] {
			return usage(fmt.Errorf("--diskspec: disk %s given twice", ds.Name))
		}
		seen[ds.Name] = true
		opts.Disks = append(opts.Disks, ds)
	}
	if o.MemSpec != "" {
		v, _ := strings.CutPrefix(o.MemSpec, "file=")
		v, _, _ = strings.Cut(v, ",snapshot=external")
		if v == "" || strings.Contains(v, ",") {
			return usage(fmt.Errorf("--memspec %q: give [file=]PATH", o.MemSpec))
		}
		opts.MemoryFile = v
	}
	if o.DiskOnly && (o.State || o.MemSpec != "") {
		return usage(errors.New("--disk-only excludes --state and --memspec"))
	}
	if !o.Atomic {
		return usage(errors.New("--atomic=false: autosnap snapshots are always atomic"))
	}
	s, err := g.changeGuest(ctx, vm)
	if err != nil {
		return err
	}
	defer s.Close()
	if (opts.Memory || opts.MemoryFile != "") && !s.guest.State.Active() {
		return usage(fmt.Errorf("guest %s is %s: --state and --memspec need a running guest", s.guest.Name, s.guest.State))
	}
	switch q {
	case engine.QuiesceOn:
		opts.Quiesce = true
	case engine.QuiesceAuto:
		if p, ok := s.member.(driver.AgentPinger); ok && s.guest.State == driver.StateRunning {
			pctx, cancel := context.WithTimeout(ctx, g.timeout())
			opts.Quiesce = p.AgentPing(pctx, s.guest) == nil
			cancel()
		}
	}
	cons := createConsistency(s.guest.State, opts)
	opts.Description = withConsistency(o.Description, cons)
	if g.DryRun {
		fmt.Fprintf(g.messages(), "Dry run: snapshot %s of %s would be created (%s)\n", opts.Name, s.guest.Name, cons.Describe())
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	snap, err := s.d.CreateSnapshot(cctx, s.guest, opts)
	if err != nil {
		return err
	}
	if snap.Consistency == driver.ConsistencyUnknown {
		snap.Consistency = cons
	}
	if g.format() == report.FormatText {
		fmt.Fprintf(g.stdout, "%s: snapshot %s created (%s, %s)\n", s.guest.Name, snap.Name, snap.Location, snap.Consistency.Describe())
		for _, n := range snap.Notes {
			fmt.Fprintf(g.stdout, "  NOTE: %s\n", n)
		}
		return nil
	}
	// Other formats keep stdout to the table; the notes go to stderr.
	for _, n := range snap.Notes {
		fmt.Fprintf(g.stderr, "NOTE: %s: %s\n", s.guest.Name, n)
	}
	return g.renderSnapshots(s.guest, []driver.Snapshot{snap}, listView{})
}
