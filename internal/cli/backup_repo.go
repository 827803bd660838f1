package cli

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/backup"
	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/repo"
	"github.com/autosnap/autosnap/internal/report"
	"github.com/autosnap/autosnap/internal/retention"
	"github.com/autosnap/autosnap/internal/selector"
)

// The repository commands (backup list, verify, prune) read and change a backup
// repository only; they never connect to a hypervisor. --vmid selects among the
// repository's guest directories by name, UUID, id and node.

// errVerifyFaults is wrapped by backup verify's error when it found damage.
var errVerifyFaults = errors.New("the backup repository is damaged")

// repoGuests opens the repository in target and returns its guests selected by
// --vmid (all when --vmid is empty).
func (g *GlobalOptions) repoGuests(target string) (*repo.Repo, []*repo.Guest, error) {
	if target == "" {
		return nil, nil, usage(errors.New("--target DIR is required: the backup repository"))
	}
	r, err := repo.OpenExisting(target)
	if err != nil {
		if qb, _ := qmpbackupLayout(target); qb {
			return nil, nil, fmt.Errorf("%s holds qmpbackup backups: autosnap reads them with backup list and restore only (verify them with qemu-img check, prune them with qmpbackup's own tools): %w", target, err)
		}
		return nil, nil, err
	}
	gs, err := r.Guests()
	if err != nil {
		return nil, nil, err
	}
	if g.VMID == "" {
		return r, gs, nil
	}
	sel, err := selector.Parse(g.VMID)
	if err != nil {
		return nil, nil, usage(fmt.Errorf("--vmid: %w", err))
	}
	cands := make([]driver.Guest, len(gs))
	byKey := map[string]*repo.Guest{}
	for i, rg := range gs {
		cands[i] = driver.Guest{Node: rg.ID.Node, ID: rg.ID.ID, Name: rg.ID.Name, UUID: rg.ID.UUID}
		byKey[cands[i].Key()] = rg
	}
	res, err := sel.Select(cands)
	for _, u := range res.Unmatched {
		fmt.Fprintf(g.stderr, "WARNING: --vmid token %q matches no guest in %s\n", u, r.Dir)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("backup repository %s: %w", r.Dir, err)
	}
	if len(res.Unmatched) > 0 {
		g.unmatchedIn = "--vmid"
		g.unmatched = append(g.unmatched, res.Unmatched...)
	}
	out := make([]*repo.Guest, 0, len(res.Guests))
	for _, c := range res.Guests {
		out = append(out, byKey[c.Key()])
	}
	return r, out, nil
}

// byteSize shows as "1.5 GiB" in tables and stays a number of bytes in JSON.
type byteSize uint64

func (b byteSize) String() string {
	const unit = 1024
	if b < unit {
		return strconv.FormatUint(uint64(b), 10) + " B"
	}
	div, exp := uint64(unit), 0
	for n := uint64(b) / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

// BackupListOptions are the flags of `backup list`.
type BackupListOptions struct {
	Target string
}

func newBackupListCommand(g *GlobalOptions) *cobra.Command {
	o := &BackupListOptions{}
	cmd := &cobra.Command{
		Use:   "list --target DIR",
		Short: "List the backup points in a repository, oldest first per guest",
		Long: `List every backup point in the repository DIR: guest, point id, time (the
instant the data was captured), level (full, inc, diff, copy), chain (the id of
the full the point stacks on; empty for a copy), parent, size on disk, virtual
size (the guest's disk sizes added up), consistency (quiesced: filesystems frozen
through the guest agent; crash; offline: the guest was shut off) and disks.

--vmid selects guests of the repository by name, UUID, id or node (the same
grammar as everywhere; no hypervisor is contacted).

JSON keys: guest, uuid, id (point id), time, level, chain, parent, checkpoint,
size, virtual_size (bytes), consistency, disks, dir.

DIR may also be a qmpbackup target (its uuid file, FULL-*/INC-*/COPY-* files per
disk, YYYY-MM chains of --monthly) or a directory of such targets, one per VM:
each target lists as a guest named after its directory, with three more columns:
state (complete; incomplete: a .partial file, qmpbackup did not finish it;
broken: it depends on an incomplete point), reason and format (qmpbackup).`,
		Example: `  autosnap backup list --target /backup
  autosnap --vmid web1 -o json backup list --target /backup`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBackupList(cmd.Context(), g, o)
		},
	}
	cmd.Flags().StringVar(&o.Target, "target", "", "the backup repository `DIR`")
	return cmd
}

var backupListColumns = []report.Column{
	{Header: "GUEST", Key: "guest"}, {Header: "UUID", Key: "uuid"}, {Header: "POINT", Key: "id"},
	{Header: "TIME", Key: "time"}, {Header: "LEVEL", Key: "level"}, {Header: "CHAIN", Key: "chain"},
	{Header: "PARENT", Key: "parent"}, {Header: "CHECKPOINT", Key: "checkpoint"},
	{Header: "SIZE", Key: "size", AlignRight: true}, {Header: "VIRTUAL SIZE", Key: "virtual_size", AlignRight: true},
	{Header: "CONSISTENCY", Key: "consistency"}, {Header: "DISKS", Key: "disks"}, {Header: "DIR", Key: "dir"},
}

func runBackupList(ctx context.Context, g *GlobalOptions, o *BackupListOptions) error {
	if qb, err := qmpbackupLayout(o.Target); err != nil || qb {
		if err != nil {
			return err
		}
		return listQmpbackup(ctx, g, o.Target)
	}
	_, gs, err := g.repoGuests(o.Target)
	if err != nil {
		return err
	}
	t := report.Table{Columns: backupListColumns}
	for _, rg := range gs {
		ps, err := readPoints(ctx, g, rg)
		if err != nil {
			return err
		}
		for _, p := range ps {
			disks := make([]string, len(p.Disks))
			for i, d := range p.Disks {
				disks[i] = d.Name
			}
			t.Rows = append(t.Rows, []any{rg.ID.Name, rg.ID.UUID, p.ID, p.Started.Local(), p.Level, p.Chain, p.Parent,
				p.Checkpoint, byteSize(p.Size()), byteSize(p.VirtualSize()), p.Consistency, disks, p.Dir})
		}
	}
	if err := report.Render(g.stdout, g.format(), t); err != nil {
		return err
	}
	return g.missing()
}

// readPoints lists a guest's points under its shared lock, waiting up to --timeout
// for a prune or backup in progress.
func readPoints(ctx context.Context, g *GlobalOptions, rg *repo.Guest) ([]repo.Point, error) {
	lctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	unlock, err := rg.RLock(lctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return rg.Points()
}

// BackupVerifyOptions are the flags of `backup verify`.
type BackupVerifyOptions struct {
	Target      string
	ReadData    bool
	Boot        bool
	BootTimeout time.Duration
	BootDir     string
}

func newBackupVerifyCommand(g *GlobalOptions) *cobra.Command {
	o := &BackupVerifyOptions{}
	cmd := &cobra.Command{
		Use:   "verify --target DIR [--read-data]",
		Short: "Check that every backup point in a repository is complete and intact",
		Long: `Check the backup points of the selected guests (all with no --vmid): every
manifest readable, every parent point and backing file present and the one
the manifest records, every image's checksum (XXH3-128 of the whole file)
matching, and qemu-img check clean. --read-data also reads every block of every
point through its backing chain.

--boot also proves that the newest point of each selected guest boots: it is
restored into a temporary directory (--boot-dir) and defined as a throwaway
guest autosnap-verify-<pid>-<guest> (new UUID and MACs, no network interfaces,
so it cannot clash with the original) on the hypervisor of --host, started,
and waited for until its guest agent answers (at most --boot-timeout). The
throwaway guest and its files are always removed, also on Ctrl-C; ones left by
a verify that was killed are removed by the next verify --boot. A point that
does not boot (or whose guest has no agent) is reported as BOOT FAILED.

Each fault is printed with the damaged file; the exit status is then 1.
JSON keys (with -o json, one row per fault): guest, point, disk, file, problem.`,
		Example: `  autosnap backup verify --target /backup
  autosnap --vmid web1 backup verify --target /backup --read-data`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBackupVerify(cmd.Context(), g, o)
		},
	}
	cmd.Flags().StringVar(&o.Target, "target", "", "the backup repository `DIR`")
	cmd.Flags().BoolVar(&o.ReadData, "read-data", false, "read every block of every point through its chain")
	cmd.Flags().BoolVar(&o.Boot, "boot", false, "boot the newest point of each guest as a throwaway guest and wait for its agent")
	cmd.Flags().DurationVar(&o.BootTimeout, "boot-timeout", 300*time.Second, "how long --boot waits for the throwaway guest's agent")
	cmd.Flags().StringVar(&o.BootDir, "boot-dir", "", "directory for --boot's restored disks (default: the system temp dir)")
	return cmd
}

var verifyColumns = []report.Column{
	{Header: "GUEST", Key: "guest"}, {Header: "POINT", Key: "point"}, {Header: "DISK", Key: "disk"},
	{Header: "FILE", Key: "file"}, {Header: "PROBLEM", Key: "problem"},
}

func runBackupVerify(ctx context.Context, g *GlobalOptions, o *BackupVerifyOptions) error {
	_, gs, err := g.repoGuests(o.Target)
	if err != nil {
		return err
	}
	var faults []repo.Fault
	points := 0
	msg := g.messages()
	for _, rg := range gs {
		lctx, cancel := context.WithTimeout(ctx, g.timeout())
		unlock, err := rg.RLock(lctx)
		cancel()
		if err != nil {
			return err
		}
		fs, err := rg.Verify(ctx, repo.VerifyOptions{ReadData: o.ReadData, Progress: func(p repo.Point) {
			points++
			fmt.Fprintf(msg, "%s: checking point %s\n", rg.ID.Name, p.ID)
		}})
		unlock()
		if err != nil {
			return fmt.Errorf("guest %s: verify: %w", rg.ID.Name, err)
		}
		faults = append(faults, fs...)
	}
	if g.format() == report.FormatText {
		for _, f := range faults {
			fmt.Fprintf(g.stdout, "FAULT %s: %s\n", f.File, f.Problem)
		}
	} else {
		t := report.Table{Columns: verifyColumns}
		for _, f := range faults {
			t.Rows = append(t.Rows, []any{f.Guest, f.Point, f.Disk, f.File, f.Problem})
		}
		if err := report.Render(g.stdout, g.format(), t); err != nil {
			return err
		}
	}
	if len(faults) > 0 {
		files := []string{}
		seen := map[string]bool{}
		for _, f := range faults {
			if !seen[f.File] {
				seen[f.File] = true
				files = append(files, f.File)
			}
		}
		err := fmt.Errorf("%w: %d faults in %s; restore those points from another copy, or prune them (a point whose files are damaged cannot be repaired)", errVerifyFaults, len(faults), strings.Join(files, ", "))
		if o.Boot {
			err = errors.Join(err, verifyBoot(ctx, g, o, gs))
		}
		return err
	}
	fmt.Fprintf(msg, "%d points of %d guests verified, no fault\n", points, len(gs))
	if o.Boot {
		if err := verifyBoot(ctx, g, o, gs); err != nil {
			return err
		}
	}
	return g.missing()
}

// keepCount is a --keep-… count: a number, or "unlimited" (-1).
type keepCount struct{ n *int }

func (k keepCount) String() string {
	if k.n == nil || *k.n == 0 {
		return "0"
	}
	if *k.n < 0 {
		return "unlimited"
	}
	return strconv.Itoa(*k.n)
}

func (k keepCount) Set(s string) error {
	if strings.EqualFold(s, "unlimited") {
		*k.n = -1
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf("%q: use a count of 0 or more, or unlimited", s)
	}
	*k.n = n
	return nil
}

func (keepCount) Type() string { return "N" }

// spanValue is --keep-within.
type spanValue struct{ s *retention.Span }

func (v spanValue) String() string {
	if v.s == nil || v.s.IsZero() {
		return ""
	}
	return v.s.String()
}

func (v spanValue) Set(s string) error {
	sp, err := retention.ParseSpan(s)
	if err != nil {
		return err
	}
	*v.s = sp
	return nil
}

func (spanValue) Type() string { return "DURATION" }

// BackupPruneOptions are the flags of `backup prune`.
type BackupPruneOptions struct {
	Target string
	Policy retention.GFS
	// Now is the reference time of --keep-within; nil means time.Now.
	Now func() time.Time
}

func newBackupPruneCommand(g *GlobalOptions) *cobra.Command {
	o := &BackupPruneOptions{}
	cmd := &cobra.Command{
		Use:   "prune --target DIR --keep-… [--dry-run]",
		Short: "Remove backup points a GFS policy does not keep, keeping the rest restorable",
		Long: `Remove the backup points of the selected guests (all with no --vmid) that the
policy does not keep, and print a reason for every point.

The policy counts as Proxmox Backup Server's prune does: --keep-within first
(every point taken after now minus DURATION: y, m (months), w, d, h, e.g.
1y6m or 36h), then --keep-last, --keep-hourly, --keep-daily, --keep-weekly,
--keep-monthly and --keep-yearly in that order. Each keeps the newest point of
each hour/day/ISO week/month/year (local time) until it has kept N, skipping
periods that already hold a point kept by an earlier option. N may be
"unlimited". Points dated in the future are kept. A policy that keeps nothing
is refused.

Removing a point that others depend on (a full under incs and diffs, an inc
under later incs) first merges its data into its dependants (qemu-img rebase),
so every remaining point restores exactly as before. The plan is journalled in
the repository: a prune cut off at any step is finished by the next prune or
backup of that guest. --dry-run (a global flag) prints the plan and changes
nothing.`,
		Example: `  autosnap backup prune --target /backup --keep-daily 7 --keep-weekly 4 --keep-monthly 6 --dry-run
  autosnap --vmid web1 backup prune --target /backup --keep-last 3 --keep-within 2d`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBackupPrune(cmd.Context(), g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Target, "target", "", "the backup repository `DIR`")
	addGFSFlags(f, &o.Policy, "", "point", "", "taken")
	return cmd
}

var pruneColumns = []report.Column{
	{Header: "GUEST", Key: "guest"}, {Header: "POINT", Key: "point"}, {Header: "TIME", Key: "time"},
	{Header: "ACTION", Key: "action"}, {Header: "REASON", Key: "reason"},
}

func runBackupPrune(ctx context.Context, g *GlobalOptions, o *BackupPruneOptions) error {
	if o.Policy.IsEmpty() {
		return usage(fmt.Errorf("%w: give at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within", retention.ErrKeepsNothing))
	}
	if err := o.Policy.Validate(); err != nil {
		return usage(err)
	}
	_, gs, err := g.repoGuests(o.Target)
	if err != nil {
		return err
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	msg := g.messages()
	t := report.Table{Columns: pruneColumns}
	var failed []string
	for _, rg := range gs {
		rows, err := pruneGuest(ctx, g, rg, o.Policy, now())
		t.Rows = append(t.Rows, rows...)
		if err != nil {
			fmt.Fprintf(g.stderr, "ERROR: %v\n", err)
			failed = append(failed, rg.ID.Name)
		}
	}
	if g.format() == report.FormatText {
		for _, r := range t.Rows {
			fmt.Fprintf(g.stdout, "%s: %-6s %s  %s\n", r[0], r[3], r[1], r[4])
		}
	} else if err := report.Render(g.stdout, g.format(), t); err != nil {
		return err
	}
	if len(failed) > 0 {
		return fmt.Errorf("backup prune failed for %s (see the errors above); the repository is consistent, run it again", strings.Join(failed, ", "))
	}
	if g.DryRun {
		fmt.Fprintln(msg, "dry run: nothing was changed")
	}
	return g.missing()
}

// pruneGuest repairs (unless --dry-run), plans and carries out the prune of one
// guest under its lock and returns one row per point (and per merge).
func pruneGuest(ctx context.Context, g *GlobalOptions, rg *repo.Guest, policy retention.GFS, now time.Time) ([][]any, error) {
	name := rg.ID.Name
	lctx, cancel := context.WithTimeout(ctx, g.timeout())
	var unlock func()
	var err error
	if g.DryRun {
		unlock, err = rg.RLock(lctx)
	} else {
		unlock, err = rg.Lock(lctx)
	}
	cancel()
	if err != nil {
		return nil, err
	}
	defer unlock()
	var rows [][]any
	if g.DryRun {
		left, err := rg.Leftovers()
		for _, d := range left {
			rows = append(rows, []any{name, "", nil, "repair", d})
		}
		if err != nil {
			return rows, err
		}
	} else {
		did, err := rg.Repair(ctx)
		for _, d := range did {
			rows = append(rows, []any{name, "", nil, "repair", d})
		}
		if err != nil {
			return rows, err
		}
	}
	plan, err := rg.PlanPrune(policy, now)
	if err != nil {
		return rows, err
	}
	for _, d := range plan.Decisions {
		action := "keep"
		if !d.Keep {
			action = "remove"
		}
		rows = append(rows, []any{name, d.ID, d.Time.Local(), action, strings.Join(d.Reasons, "; ")})
	}
	for _, st := range plan.Rebase {
		to := "standalone"
		if st.To != "" {
			to = "onto " + st.To
		}
		rows = append(rows, []any{name, st.Point, nil, "merge", fmt.Sprintf("disk %s: the data of %s merged in, rebased %s", st.Disk, st.From, to)})
	}
	if g.DryRun || len(plan.Remove) == 0 {
		return rows, nil
	}
	if err := rg.Prune(ctx, plan); err != nil {
		return rows, err
	}
	return rows, nil
}

// errBootFailed is wrapped by backup verify --boot's error when a point did not boot.
var errBootFailed = errors.New("a backup point did not boot")

// verifyBoot is backup verify --boot: the newest point of each guest booted as a
// throwaway guest (backup.BootCheck), one line per guest.
func verifyBoot(ctx context.Context, g *GlobalOptions, o *BackupVerifyOptions, gs []*repo.Guest) error {
	d, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer d.Close()
	host, ok := d.(backup.BootHost)
	if !ok {
		return usage(fmt.Errorf("--boot: the %s connection cannot define, start and remove guests (give a single libvirt --host)", d.Name()))
	}
	msg := g.messages()
	bc := backup.BootCheck{Host: host, Dir: o.BootDir, Timeout: o.BootTimeout, LockTimeout: g.timeout(),
		Log: func(s string) { fmt.Fprintln(msg, s) }}
	notes, err := bc.Sweep(ctx)
	for _, n := range notes {
		fmt.Fprintln(msg, n)
	}
	if err != nil {
		return err
	}
	out := g.stdout
	if g.machine() {
		out = msg
	}
	var failed []string
	for _, rg := range gs {
		ps, err := readPoints(ctx, g, rg)
		if err != nil {
			return err
		}
		if len(ps) == 0 {
			continue
		}
		res := bc.Boot(ctx, rg, ps[len(ps)-1])
		if res.Err != nil {
			failed = append(failed, rg.ID.Name)
			fmt.Fprintf(out, "BOOT FAILED %s point %s: %v\n", res.Guest, res.Point, res.Err)
		} else {
			fmt.Fprintf(out, "BOOT OK %s point %s: agent answered %s after the start\n", res.Guest, res.Point, res.Took.Round(100*time.Millisecond))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%w: %s; see the lines above, and restore an older point with restore --define to look into it", errBootFailed, strings.Join(failed, ", "))
	}
	return nil
}
