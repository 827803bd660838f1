package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/history"
	"github.com/autosnap/autosnap/internal/monitor"
	"github.com/autosnap/autosnap/internal/policy"
)

// MonitorOptions are the flags of `monitor`.
type MonitorOptions struct {
	Config        string
	DB            string
	Policy        string
	Warning       float64
	Critical      float64
	MaxChainDepth int
	// now is the plugin's clock; nil is time.Now.
	now func() time.Time
}

func newMonitorCommand(g *GlobalOptions) *cobra.Command {
	o := &MonitorOptions{}
	cmd := &cobra.Command{
		Use:   "monitor [--config F] [--warning X] [--critical Y] [--policy P]",
		Short: "Nagios/Icinga plugin: are every policy's snapshots and backups fresh?",
		Long: `Check every policy of the policy file (--config, default ` + policy.DefaultPath + `)
and report as a Nagios/Icinga plugin: one status line with performance data,
then one line per guest, problems first.

For each guest a policy selects (listed live from its host):
  - its newest snapshot of the policy's label, by the time in its name, against
    the policy's snapshot cadence (the interval of its schedule; for cron, the
    longest gap between two runs over the next year): WARNING when older than
    --warning × cadence, CRITICAL when older than --critical × cadence or when
    there is none;
  - likewise its newest point in the policy's backup target;
  - WARNING when its last snapshot or backup run failed (from the history
    database, --db or history.db in the file's state_dir, when it exists; it is
    read while the daemon runs);
  - WARNING when a disk's backing chain has more overlays than
    monitor.max_chain_depth (--max-chain-depth).
A policy that selects no guest is WARNING. Templates are not checked, nor the
snapshot age of a guest that is not running under a policy with only_running.
Guests are checked --max-parallel at a time.
--warning, --critical and --max-chain-depth default to the file's monitor:
section, else 2, 3 and off.

Performance data: guests, stale (guests with a stale or missing snapshot or
backup), failed, deep_chains, unknown (checks that could not be made), and
oldest_snapshot_age / oldest_backup_age in seconds (the oldest of the guests'
newest items, with that guest's warning and critical ages as thresholds).

EXIT STATUS (the plugin contract):
  0  OK
  1  WARNING
  2  CRITICAL
  3  UNKNOWN: the policy file cannot be read, a host is unreachable, a backup
     repository or a guest's snapshots cannot be read (the output says which).
     A CRITICAL guest elsewhere still makes the status CRITICAL.
A malformed command line exits 2, as for every command.`,
		Example: `  autosnap monitor
  autosnap monitor --config /etc/autosnap/autosnap.yaml --warning 1.5 --critical 2
  autosnap monitor --policy web`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runMonitor(cmd.Context(), g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Config, "config", "", "the policy `FILE` (default "+policy.DefaultPath+")")
	f.StringVar(&o.DB, "db", "", "the history database `PATH` (default history.db in the file's state_dir)")
	f.StringVar(&o.Policy, "policy", "", "check only policy `P`")
	f.Float64Var(&o.Warning, "warning", 0, "WARNING past `X` times the cadence (default: the file's monitor.warning, else 2)")
	f.Float64Var(&o.Critical, "critical", 0, "CRITICAL past `Y` times the cadence (default: the file's monitor.critical, else 3)")
	f.IntVar(&o.MaxChainDepth, "max-chain-depth", 0, "WARNING above `N` overlays in a disk's chain (default: the file's monitor.max_chain_depth, else off)")
	return cmd
}

// runMonitor prints the plugin output and returns a pluginStatus for any status
// but OK; every problem, even a bad policy file, is reported as the plugin's
// UNKNOWN rather than as an error.
func runMonitor(ctx context.Context, g *GlobalOptions, o *MonitorOptions) error {
	now := time.Now
	if o.now != nil {
		now = o.now
	}
	unknown := func(format string, a ...any) error {
		fmt.Fprintf(g.stdout, "AUTOSNAP UNKNOWN - "+format+"\n", a...)
		return pluginStatus{ExitMonitorUnknown}
	}
	path := o.Config
	if path == "" {
		path = policy.DefaultPath
	}
	cfg, err := policy.Load(path)
	if err != nil {
		return unknown("cannot read the policy file: %s", monitor.OneLine(err.Error()))
	}
	if o.Warning < 0 || o.Critical < 0 || o.MaxChainDepth < 0 {
		return unknown("--warning, --critical and --max-chain-depth must not be negative")
	}
	var unknowns []string
	var hist monitor.History
	dbPath := o.DB
	if dbPath == "" {
		dbPath = history.PathIn(cfg.StateDir)
	}
	st, err := history.Open(dbPath, history.Options{ReadOnly: true, Timeout: g.timeout()})
	switch {
	case err == nil:
		defer st.Close()
		hist = st
	case errors.Is(err, history.ErrNoDatabase) && o.DB == "":
		// No daemon has run yet: nothing to say about last runs.
	default:
		unknowns = append(unknowns, "the run history cannot be read: "+err.Error())
	}
	if o.Warning > 0 {
		cfg.Monitor.Warning = o.Warning
	}
	if o.Critical > 0 {
		cfg.Monitor.Critical = o.Critical
	}
	if o.MaxChainDepth > 0 {
		cfg.Monitor.MaxChainDepth = o.MaxChainDepth
	}
	w, c := cfg.Monitor.Warning, cfg.Monitor.Critical
	if w <= 0 {
		w = monitor.DefaultWarning
	}
	if c <= 0 {
		c = monitor.DefaultCritical
	}
	if c < w {
		return unknown("critical (%g) is below warning (%g): critical must be the larger multiple of the cadence", c, w)
	}
	in, err := monitor.Collect(ctx, monitor.Options{Config: cfg, Policy: o.Policy, History: hist,
		Open: g.openDriver, Timeout: g.timeout(), Now: now(), Parallel: g.MaxParallel})
	if err != nil {
		return unknown("%s", monitor.OneLine(err.Error()))
	}
	in.Unknown = append(unknowns, in.Unknown...)
	r := monitor.Evaluate(in)
	fmt.Fprint(g.stdout, r.String())
	if r.Status == monitor.OK {
		return nil
	}
	return pluginStatus{int(r.Status)}
}
