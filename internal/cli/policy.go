package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/policy"
	"github.com/autosnap/autosnap/internal/report"
	"github.com/autosnap/autosnap/internal/retention"
)

const policyExitHelp = `
EXIT STATUS:
  0  the policy file is valid (and, with --connect, no two policies share a guest)
  2  the file cannot be read or is invalid, or with --connect two policies would
     fight over a real guest; every problem is printed with its line
  3  --connect could not connect or authenticate to a policy's host
`

const policyPlanExitHelp = `
EXIT STATUS:
  0  the plan was printed
  2  the policy file cannot be read or is invalid (every problem is printed with
     its line), or a flag is wrong
  3  --connect could not connect or authenticate to a policy's host
`

// policyOptions are the flags of `policy check` and `policy plan`.
type policyOptions struct {
	Config  string
	Connect bool
}

func (o *policyOptions) flags(c *cobra.Command) {
	c.Flags().StringVar(&o.Config, "config", envOr("AUTOSNAP_CONFIG", policy.DefaultPath), "policy file (env AUTOSNAP_CONFIG)")
	c.Flags().BoolVar(&o.Connect, "connect", false, "also connect to each policy's host and list the guests each policy selects now")
}

// policyPlanOptions are the flags of `policy plan`.
type policyPlanOptions struct {
	policyOptions
	At      string
	Days    int
	Policy  string
	MaxRuns int
	// now is the clock when --at is not given; nil means time.Now.
	now func() time.Time
}

func newPolicyCommand(g *GlobalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Check the policy file and plan what the daemon will take and keep",
		Long: `The policy file (default ` + policy.DefaultPath + `, or --config, or env
AUTOSNAP_CONFIG) names connections and policies: which guests, when to snapshot
and back them up, and what to keep. See docs/policy.md and examples/autosnap.yaml.`,
		Args: cobra.NoArgs,
	}
	cmd.SetHelpTemplate(cmd.HelpTemplate() + policyExitHelp)

	var co policyOptions
	check := &cobra.Command{
		Use:   "check",
		Short: "Validate the policy file; print every problem with its line",
		Long: `check reads the policy file and prints OK and one line per policy, or every
problem with its file:line: unknown keys, bad values, schedules, labels and
selections, retention that keeps nothing, and policies on one host whose
selections share a guest while they snapshot under one label or back up into one
target. With --connect it also connects to each host, lists the guests each
policy selects now, and reports policies that share a real guest.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runPolicyCheck(cmd.Context(), g, &co) },
	}
	co.flags(check)
	check.SetHelpTemplate(check.HelpTemplate() + policyExitHelp)

	var po policyPlanOptions
	plan := &cobra.Command{
		Use:   "plan",
		Short: "Simulate the policies: what would be taken when, and what retention keeps",
		Long: `plan simulates a daemon started at --at (default now) with no run recorded
before: a job runs at once, then at each slot of its schedule, for --days days.
For every run it prints the snapshot name or the backup level and why; at the end
which simulated snapshots and backups retention keeps, and the rule that keeps
each. Nothing is contacted unless --connect is given, which also lists the guests
each policy selects now. -o json prints the plan as JSON.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runPolicyPlan(cmd.Context(), g, &po) },
	}
	po.flags(plan)
	plan.Flags().StringVar(&po.At, "at", "", "start of the simulation: 2006-01-02, \"2006-01-02 15:04[:05]\" (in the file's timezone) or RFC 3339 (default now)")
	plan.Flags().IntVar(&po.Days, "days", 7, "days to simulate")
	plan.Flags().StringVar(&po.Policy, "policy", "", "plan only this policy")
	plan.Flags().IntVar(&po.MaxRuns, "max-runs", policy.DefaultPlanRuns, "runs listed per policy and job (the rest are counted); -1 lists all")
	plan.SetHelpTemplate(plan.HelpTemplate() + policyPlanExitHelp)

	cmd.AddCommand(check, plan)
	return cmd
}

// policyLoadReport loads the file, printing every problem to stderr; the error returned
// is a usage error that only counts them.
func policyLoadReport(g *GlobalOptions, path string) (*policy.Config, error) {
	cfg, err := policy.Load(path)
	if err == nil {
		return cfg, nil
	}
	var es policy.Errors
	if errors.As(err, &es) {
		for _, e := range es {
			fmt.Fprintln(g.stderr, e.Error())
		}
		return nil, usage(fmt.Errorf("%s: %d %s: fix and run autosnap policy check again", path, len(es), policyPlural(len(es), "problem", "problems")))
	}
	return nil, usage(err)
}

func policyPlural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func runPolicyCheck(ctx context.Context, g *GlobalOptions, o *policyOptions) error {
	cfg, err := policyLoadReport(g, o.Config)
	if err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "OK %s: %d %s, time zone %s\n", o.Config, len(cfg.Policies), policyPlural(len(cfg.Policies), "policy", "policies"), cfg.Location)
	for i := range cfg.Policies {
		fmt.Fprintln(g.stdout, "  "+policyLine(cfg, &cfg.Policies[i]))
	}
	if !o.Connect {
		return nil
	}
	selected, conflicts, err := policyConnect(ctx, g, cfg, "")
	if err != nil {
		return err
	}
	for i := range cfg.Policies {
		p := &cfg.Policies[i]
		fmt.Fprintf(g.stdout, "  %s selects now: %s\n", p.Name, policyGuestList(selected[p.Name]))
	}
	if len(conflicts) > 0 {
		for _, c := range conflicts {
			fmt.Fprintf(g.stderr, "%s:%d: %s\n", o.Config, c.LineB, c.String())
		}
		return usage(fmt.Errorf("%s: %d %s over real guests: fix and run autosnap policy check --connect again", o.Config, len(conflicts), policyPlural(len(conflicts), "overlap", "overlaps")))
	}
	return nil
}

func policyGuestList(gs []string) string {
	if len(gs) == 0 {
		return "no guest"
	}
	return strings.Join(gs, ", ")
}

// policyLine is one line saying what a policy does.
func policyLine(cfg *policy.Config, p *policy.Policy) string {
	host, conn := cfg.HostOf(p)
	var b strings.Builder
	fmt.Fprintf(&b, "%s: host %s", p.Name, host)
	if conn != nil {
		fmt.Fprintf(&b, " (connection %s)", conn.Name)
	}
	fmt.Fprintf(&b, ", vmid %q", p.VMID)
	if s := p.Snapshot; s != nil {
		fmt.Fprintf(&b, "; snapshot %q label %s, %s", s.Schedule.Spec, s.Label, policy.KeepString(s.Keep))
	}
	if bk := p.Backup; bk != nil {
		fmt.Fprintf(&b, "; backup %q into %s", bk.Schedule.Spec, bk.Target)
		var lv []string
		for _, l := range bk.Levels {
			lv = append(lv, fmt.Sprintf("%s %q", l.Level, l.Schedule.Spec))
		}
		if len(lv) > 0 {
			fmt.Fprintf(&b, ", level %s, else %s", strings.Join(lv, ", "), bk.Default)
		} else {
			fmt.Fprintf(&b, ", level %s", bk.Default)
		}
		if !bk.Prune.IsEmpty() {
			fmt.Fprintf(&b, ", prune %s", policy.KeepString(bk.Prune))
		}
	}
	return b.String()
}

// policyConnect connects to the host of every policy (only policy only when not
// ""), lists its guests, and returns the names each policy selects and the
// conflicts over real guests.
func policyConnect(ctx context.Context, g *GlobalOptions, cfg *policy.Config, only string) (map[string][]string, []policy.Conflict, error) {
	type hostKey struct{ host, conn string }
	var order []hostKey
	byHost := map[hostKey][]*policy.Policy{}
	for i := range cfg.Policies {
		p := &cfg.Policies[i]
		if only != "" && p.Name != only {
			continue
		}
		host, conn := cfg.HostOf(p)
		k := hostKey{host: host}
		if conn != nil {
			k.conn = conn.Name
		}
		if _, ok := byHost[k]; !ok {
			order = append(order, k)
		}
		byHost[k] = append(byHost[k], p)
	}
	selected := map[string][]string{}
	var conflicts []policy.Conflict
	for _, k := range order {
		guests, err := policyHostGuests(ctx, g, cfg, k.host, cfg.Connection(k.conn))
		if err != nil {
			return nil, nil, err
		}
		for _, p := range byHost[k] {
			for _, gu := range p.SelectGuests(guests) {
				selected[p.Name] = append(selected[p.Name], gu.Name)
			}
		}
		if only == "" {
			for _, c := range cfg.OverlapsGuests(k.host, guests) {
				if !slices.Contains(conflicts, c) {
					conflicts = append(conflicts, c)
				}
			}
		}
	}
	return selected, conflicts, nil
}

// policyHostGuests lists the guests of host, connecting with conn's credentials when
// the policy names a connection, with tags loaded.
func policyHostGuests(ctx context.Context, g *GlobalOptions, cfg *policy.Config, host string, conn *policy.Connection) ([]driver.Guest, error) {
	dc := driver.Config{Timeout: g.timeout()}
	if conn != nil {
		pw, err := policy.ResolveSecret(conn.Secret)
		if err != nil {
			return nil, usage(fmt.Errorf("connection %s (%s:%d): password: %w", conn.Name, cfg.Path, conn.Line, err))
		}
		tok, err := policy.ResolveSecret(conn.APIToken)
		if err != nil {
			return nil, usage(fmt.Errorf("connection %s (%s:%d): api_token: %w", conn.Name, cfg.Path, conn.Line, err))
		}
		dc.Username, dc.Password, dc.APIToken = conn.User, pw, tok
		dc.Fingerprint, dc.CAFile, dc.Insecure = conn.Fingerprint, conn.CAFile, conn.Insecure
	}
	open := g.openDriver
	if open == nil {
		open = driver.Open
	}
	cctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	d, err := open(cctx, host, dc)
	if err != nil {
		if errors.Is(err, driver.ErrConnect) {
			return nil, fmt.Errorf("host %s: %w", host, err)
		}
		return nil, usage(fmt.Errorf("host %s: %w", host, err))
	}
	defer d.Close()
	lctx, lcancel := context.WithTimeout(ctx, g.timeout())
	defer lcancel()
	guests, err := d.Guests(lctx)
	if err != nil {
		return nil, fmt.Errorf("host %s: list guests: %w", host, err)
	}
	if err := driver.LoadTags(lctx, d, guests); err != nil {
		return nil, fmt.Errorf("host %s: read guest tags: %w", host, err)
	}
	return guests, nil
}

// policyParseAt reads --at in loc.
func policyParseAt(s string, loc *time.Location) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02 15:04:05", "2006-01-02T15:04:05", "2006-01-02 15:04", "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, loc); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("--at %q: use 2006-01-02, \"2006-01-02 15:04\" (in the policy file's time zone) or RFC 3339 such as 2006-01-02T15:04:05Z", s)
}

func runPolicyPlan(ctx context.Context, g *GlobalOptions, o *policyPlanOptions) error {
	if o.Days < 1 || o.Days > 3660 {
		return usage(fmt.Errorf("--days %d: use 1 to 3660", o.Days))
	}
	if o.MaxRuns < -1 {
		return usage(fmt.Errorf("--max-runs %d: use a count, or -1 for all", o.MaxRuns))
	}
	cfg, err := policyLoadReport(g, o.Config)
	if err != nil {
		return err
	}
	at := time.Now()
	if o.now != nil {
		at = o.now()
	}
	at = at.Truncate(time.Second)
	if o.At != "" {
		if at, err = policyParseAt(o.At, cfg.Location); err != nil {
			return usage(err)
		}
	}
	if o.Policy != "" && cfg.Policy(o.Policy) == nil {
		return usage(fmt.Errorf("--policy %q: no such policy in %s", o.Policy, o.Config))
	}
	runs := o.MaxRuns
	if runs == 0 {
		runs = 1 // Simulate reads 0 as its default; the runs are dropped below
	}
	plan, err := cfg.Simulate(policy.PlanOptions{At: at, Days: o.Days, Policy: o.Policy, MaxRuns: runs, Format: g.tsFormat()})
	if err != nil {
		return usage(err)
	}
	if o.MaxRuns == 0 {
		for _, pp := range plan.Policies {
			if pp.Snapshot != nil {
				pp.Snapshot.Runs = nil
			}
			if pp.Backup != nil {
				pp.Backup.Runs = nil
			}
		}
	}
	if o.Connect {
		selected, _, err := policyConnect(ctx, g, cfg, o.Policy)
		if err != nil {
			return err
		}
		for i := range plan.Policies {
			plan.Policies[i].Guests = selected[plan.Policies[i].Policy]
		}
	}
	switch g.format() {
	case report.FormatJSON, report.FormatJSONPretty:
		enc := json.NewEncoder(g.stdout)
		if g.format() == report.FormatJSONPretty {
			enc.SetIndent("", "  ")
		}
		return enc.Encode(plan)
	}
	policyWritePlan(g.stdout, plan, o.Connect)
	return nil
}

const policyPlanTime = "2006-01-02 15:04:05 MST"

// policyWritePlan prints a plan for people.
func policyWritePlan(w io.Writer, p *policy.Plan, connected bool) {
	fmt.Fprintf(w, "Plan from %s to %s (%s), as a daemon started then with no earlier runs would go.\n",
		p.From.Format(policyPlanTime), p.Until.Format(policyPlanTime), p.TimeZone)
	if !connected {
		fmt.Fprintln(w, "No hypervisor contacted: every run applies to each guest the policy selects then (--connect lists them).")
	}
	for _, pp := range p.Policies {
		fmt.Fprintf(w, "\npolicy %s (line %d): host %s, vmid %q\n", pp.Policy, pp.Line, pp.Host, pp.VMID)
		if connected {
			fmt.Fprintf(w, "  guests now: %s\n", policyGuestList(pp.Guests))
		}
		if s := pp.Snapshot; s != nil {
			fmt.Fprintf(w, "  snapshot %q, label %s: %d %s\n", s.Schedule, s.Label, s.TotalRuns, policyPlural(s.TotalRuns, "run", "runs"))
			for _, r := range s.Runs {
				fmt.Fprintf(w, "    %s  %s  %s\n", r.At.Format(policyPlanTime), r.Name, r.Why)
			}
			if more := s.TotalRuns - len(s.Runs); more > 0 {
				fmt.Fprintf(w, "    … %d more %s\n", more, policyPlural(more, "run", "runs"))
			}
			if s.Failed > 0 {
				fmt.Fprintf(w, "  %d %s would fail: the snapshot name was taken by an earlier run\n", s.Failed, policyPlural(s.Failed, "run", "runs"))
			}
			policyWriteKept(w, s.Keep, s.Kept, s.Removed, s.TotalRuns-s.Failed, "snapshot", "snapshots")
		}
		if b := pp.Backup; b != nil {
			var lv []string
			for _, l := range []string{"full", "inc", "diff", "copy", "auto"} {
				if n := b.Levels[l]; n > 0 {
					lv = append(lv, fmt.Sprintf("%d %s", n, l))
				}
			}
			fmt.Fprintf(w, "  backup %q into %s: %d %s", b.Schedule, b.Target, b.TotalRuns, policyPlural(b.TotalRuns, "run", "runs"))
			if len(lv) > 0 {
				fmt.Fprintf(w, " (%s)", strings.Join(lv, ", "))
			}
			fmt.Fprintln(w)
			for _, r := range b.Runs {
				fmt.Fprintf(w, "    %s  %-4s  %s\n", r.At.Format(policyPlanTime), r.Level, r.Why)
			}
			if more := b.TotalRuns - len(b.Runs); more > 0 {
				fmt.Fprintf(w, "    … %d more %s\n", more, policyPlural(more, "run", "runs"))
			}
			if b.Prune == "" {
				fmt.Fprintln(w, "  no prune: every backup is kept")
			} else {
				policyWriteKept(w, b.Prune, b.Kept, b.Removed, b.TotalRuns, "backup", "backups")
			}
		}
	}
}

func policyWriteKept(w io.Writer, rule string, kept []retention.GFSDecision, removed, total int, one, many string) {
	fmt.Fprintf(w, "  retention %s keeps %d of %d %s after the last run, removed %d:\n", rule, len(kept), total, policyPlural(total, one, many), removed)
	for _, d := range kept {
		fmt.Fprintf(w, "    %s  %s  %s\n", d.Time.Format(policyPlanTime), d.ID, strings.Join(d.Reasons, "; "))
	}
}
