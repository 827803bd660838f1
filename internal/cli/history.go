package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/history"
	"github.com/autosnap/autosnap/internal/policy"
	"github.com/autosnap/autosnap/internal/report"
	"github.com/autosnap/autosnap/internal/selector"
)

// HistoryOptions are the flags of `history`.
type HistoryOptions struct {
	Config string
	DB     string
	Policy string
	Kind   string
	Since  string
	Failed bool
	Limit  int
	// now is the clock --since DURATION counts back from; nil is time.Now.
	now func() time.Time
}

func newHistoryCommand(g *GlobalOptions) *cobra.Command {
	o := &HistoryOptions{}
	cmd := &cobra.Command{
		Use:   "history [--policy P] [--since DUR|TIME] [--failed] [--limit N]",
		Short: "Show the jobs the daemon ran, newest first, with each guest's result",
		Long: `Show the run history the daemon records: every job (one run of one policy),
newest first, each followed by one line per guest: when it started, how long it
took, its outcome (ok, failed, skipped, aborted: the daemon stopped or crashed
before the job ended, running), the error, and the snapshots or backup points
it created and removed.

The database is --db, else history.db in the state_dir of the policy file
(--config, default ` + policy.DefaultPath + `; ` + policy.DefaultStateDir + ` when there is no file).
It is opened read-only, so this works while the daemon runs: a write in
progress is waited for (at most --timeout).

--vmid (before or after the command) keeps the jobs that ran on the selected
guests, by name, and shows only those guests' lines. --since takes a duration
back from now (90m, 36h, 7d) or a time (2026-11-30, "2026-11-30 08:00",
RFC 3339). --failed shows only failed jobs.

JSON (-o json|jsonpretty) is an array of jobs, newest first, with the keys:
  id, policy, kind (snapshot|backup|prune|verify), trigger (schedule, catch-up,
  manual, web), dry_run, started, ended (RFC 3339; "0001-01-01T00:00:00Z" while
  running), outcome, error, and guests: an array of objects with the keys host,
  guest, started, ended, outcome, error, created, removed (arrays of snapshot
  names or backup point ids), bytes (written by a backup), freeze_ns
  (nanoseconds the guest's filesystems were frozen; 0 when not quiesced).`,
		Example: `  autosnap history --since 24h
  autosnap history --policy web --failed -o json
  autosnap --vmid web1 history --limit 5`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runHistory(cmd.Context(), g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Config, "config", "", "policy `FILE` whose state_dir holds the database (default "+policy.DefaultPath+")")
	f.StringVar(&o.DB, "db", "", "the history database `PATH` (overrides --config)")
	f.StringVar(&o.Policy, "policy", "", "only jobs of policy `P`")
	f.StringVar(&o.Kind, "kind", "", "only jobs of `KIND`: snapshot, backup, prune or verify")
	f.StringVar(&o.Since, "since", "", "only jobs started since `DUR|TIME` (7d, 36h, 2026-11-30, RFC 3339)")
	f.BoolVar(&o.Failed, "failed", false, "only failed jobs")
	f.IntVar(&o.Limit, "limit", 50, "at most `N` jobs (0: all)")
	return cmd
}

var historyColumns = []report.Column{
	{Header: "JOB", Key: "id", AlignRight: true}, {Header: "POLICY", Key: "policy"}, {Header: "KIND", Key: "kind"},
	{Header: "TRIGGER", Key: "trigger"}, {Header: "GUEST", Key: "guest"}, {Header: "STARTED", Key: "started"},
	{Header: "DURATION", Key: "duration", AlignRight: true}, {Header: "OUTCOME", Key: "outcome"},
	{Header: "CREATED", Key: "created"}, {Header: "REMOVED", Key: "removed"},
	{Header: "BYTES", Key: "bytes", AlignRight: true}, {Header: "ERROR", Key: "error"},
}

func runHistory(ctx context.Context, g *GlobalOptions, o *HistoryOptions) error {
	now := time.Now
	if o.now != nil {
		now = o.now
	}
	q := history.Query{Policy: o.Policy, Kind: history.Kind(o.Kind), Limit: o.Limit}
	switch q.Kind {
	case "", history.KindSnapshot, history.KindBackup, history.KindPrune, history.KindVerify:
	default:
		return usage(fmt.Errorf("--kind %q: use snapshot, backup, prune or verify", o.Kind))
	}
	if o.Limit < 0 {
		return usage(errors.New("--limit must be 0 (all) or more"))
	}
	if o.Failed {
		q.Outcome = history.Failed
	}
	if o.Since != "" {
		t, err := parseSince(o.Since, now(), time.Local)
		if err != nil {
			return usage(fmt.Errorf("--since: %w", err))
		}
		q.Since = t
	}
	if err := vmidQuery(g.VMID, &q); err != nil {
		return err
	}
	path, _, err := historyPath(o.Config, o.DB)
	if err != nil {
		return err
	}
	st, err := history.Open(path, history.Options{ReadOnly: true, Timeout: g.timeout()})
	if err != nil {
		return err
	}
	defer st.Close()
	jobs, err := st.Jobs(ctx, q)
	if err != nil {
		return err
	}
	if g.machine() {
		return report.JSON(g.stdout, g.format() == report.FormatJSONPretty, jobs)
	}
	t := report.Table{Columns: historyColumns}
	for _, j := range jobs {
		trig := j.Trigger
		if j.DryRun {
			trig += " (dry run)"
		}
		t.Rows = append(t.Rows, []any{j.ID, j.Policy, string(j.Kind), trig, guestCount(len(j.Guests)),
			j.Started.Local().Format("2006-01-02 15:04:05"), span(j.Started, j.Ended), string(j.Outcome), "", "", "", j.Error})
		for _, gr := range j.Guests {
			var bytes any = ""
			if gr.Bytes > 0 {
				bytes = byteSize(gr.Bytes)
			}
			t.Rows = append(t.Rows, []any{"", "", "", "", gr.Guest, gr.Started.Local().Format("2006-01-02 15:04:05"),
				span(gr.Started, gr.Ended), string(gr.Outcome), strings.Join(gr.Created, " "), strings.Join(gr.Removed, " "), bytes, gr.Error})
		}
	}
	return report.Render(g.stdout, g.format(), t)
}

func guestCount(n int) string {
	if n == 1 {
		return "1 guest"
	}
	return strconv.Itoa(n) + " guests"
}

func span(start, end time.Time) string {
	if end.IsZero() || start.IsZero() {
		return ""
	}
	return end.Sub(start).Round(100 * time.Millisecond).String()
}

// vmidQuery narrows q to the guests --vmid selects, by name: a single plain name
// goes through the guest index, anything else is matched against each run.
func vmidQuery(vmid string, q *history.Query) error {
	vmid = strings.TrimSpace(vmid)
	if vmid == "" {
		return nil
	}
	sel, err := selector.Parse(vmid)
	if err != nil {
		return usage(fmt.Errorf("--vmid: %w", err))
	}
	if !strings.ContainsAny(vmid, ",%*@:") && !strings.HasPrefix(vmid, "-") {
		q.Guest = vmid
		return nil
	}
	q.GuestMatch = func(host, guest string) bool {
		res, _ := sel.Select([]driver.Guest{{Node: host, Name: guest}})
		return len(res.Guests) > 0
	}
	return nil
}

// historyPath is the history database: db when set, else history.db in the
// state_dir of the policy file (config, or the default file when it exists), else
// in the default state directory. It returns the policy file read, if any.
func historyPath(config, db string) (string, *policy.Config, error) {
	var cfg *policy.Config
	if config != "" || fileExists(policy.DefaultPath) {
		path := config
		if path == "" {
			path = policy.DefaultPath
		}
		c, err := policy.Load(path)
		if err != nil {
			if db == "" {
				return "", nil, fmt.Errorf("the policy file names the history database: %w (or pass --db PATH)", err)
			}
		} else {
			cfg = c
		}
	}
	if db != "" {
		return db, cfg, nil
	}
	dir := policy.DefaultStateDir
	if cfg != nil && cfg.StateDir != "" {
		dir = cfg.StateDir
	}
	return history.PathIn(dir), cfg, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// parseSince reads a duration back from now (90m, 36h, 7d) or a time in loc.
func parseSince(s string, now time.Time, loc *time.Location) (time.Time, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.ParseFloat(d, 64); err == nil && n >= 0 {
			return now.Add(-time.Duration(n * float64(24*time.Hour))), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%q is negative", s)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, loc); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is neither a duration (90m, 36h, 7d) nor a time (2026-11-30, \"2026-11-30 08:00\", RFC 3339)", s)
}
