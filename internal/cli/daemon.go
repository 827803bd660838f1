package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/daemon"
	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/history"
	"github.com/autosnap/autosnap/internal/policy"
	"github.com/autosnap/autosnap/internal/watchdog"
)

// DaemonOptions are the flags of `daemon`.
type DaemonOptions struct {
	Config     string
	Listen     string
	LogFormat  string
	Once       bool
	MaxJobs    int
	MaxPerHost int
	Grace      time.Duration

	// Tests only.
	clock      daemon.Clock
	holdFrozen time.Duration
	// started is called once the daemon is built and serving, with its listener
	// address (nil without --listen).
	started func(*daemon.Daemon, net.Addr)
}

func newDaemonCommand(g *GlobalOptions) *cobra.Command {
	o := &DaemonOptions{}
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the policy file's snapshots and backups on their schedules",
		Long: `Run every policy of the policy file (--config, env AUTOSNAP_CONFIG, default
` + policy.DefaultPath + `) on its schedule until stopped (see docs/daemon.md).

A job whose slot passed while the daemon was not running (or the host slept, or
the clock jumped) runs once when the daemon notices, not once per missed slot.
A guest is never worked on by two jobs at once; --max-jobs bounds the guests
worked on at once in all, --max-per-host on one host, and a policy's
max_parallel within its job. Every job and guest is recorded in the history
database in the policy file's state_dir (autosnap history shows it).

Signals: SIGHUP reloads the policy file; an invalid file is logged and the old
one keeps running. SIGTERM or SIGINT stops taking work; guests being worked on
get --grace to finish, then are cancelled safely (filesystems thawed, merges
aborted with the chains intact) and the daemon exits 0.

--listen ADDR serves Prometheus metrics at /metrics and the web dashboard with
its JSON API at / (off by default; see docs/dashboard.md). Off loopback the
dashboard needs the policy file's dashboard: section (TLS and a token or users);
without them only /metrics is served. Logs go to
stderr (--log-format text or json; text without timestamps under systemd, where
journald adds its own). --once runs what is due now and exits, for systemd timers
and cron: exit status 1 when a job or guest failed.`,
		Example: `  autosnap daemon
  autosnap daemon --config /etc/autosnap/autosnap.yaml --listen 127.0.0.1:9750 --log-format json
  autosnap daemon --once`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDaemon(cmd.Context(), g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Config, "config", envOr("AUTOSNAP_CONFIG", policy.DefaultPath), "policy `FILE` (env AUTOSNAP_CONFIG)")
	f.StringVar(&o.Listen, "listen", "", "serve /metrics and the dashboard on `ADDR` (host:port, e.g. 127.0.0.1:8460; default off)")
	f.StringVar(&o.LogFormat, "log-format", "text", "text or json")
	f.BoolVar(&o.Once, "once", false, "run the jobs due now, wait for them and exit")
	f.IntVar(&o.MaxJobs, "max-jobs", 4, "guests worked on at once by the whole daemon")
	f.IntVar(&o.MaxPerHost, "max-per-host", 0, "guests worked on at once on one host (0: --max-jobs)")
	f.DurationVar(&o.Grace, "grace", time.Minute, "on SIGTERM, how long running guests may finish before they are cancelled")
	return cmd
}

// adjustDaemon, when set, adjusts the options of the next runDaemon (tests only).
var adjustDaemon func(*DaemonOptions)

// runDaemon loads the policy file, opens the history database and runs the daemon
// until ctx ends (SIGTERM/SIGINT), or once with --once.
func runDaemon(ctx context.Context, g *GlobalOptions, o *DaemonOptions) error {
	if adjustDaemon != nil {
		adjustDaemon(o)
	}
	level := slog.LevelInfo
	if g.Debug {
		level = slog.LevelDebug
	}
	log, err := daemon.NewLogger(g.stderr, o.LogFormat, level, os.Getenv("JOURNAL_STREAM") != "")
	if err != nil {
		return usage(err)
	}
	if o.MaxJobs < 1 || o.MaxPerHost < 0 || o.Grace < 0 {
		return usage(errors.New("--max-jobs must be at least 1, --max-per-host and --grace not negative"))
	}
	load := func() (*policy.Config, error) { return policy.Load(o.Config) }
	cfg, err := load()
	if err != nil {
		return usage(fmt.Errorf("policy file: %w (fix it and check with: autosnap policy check --config %s)", err, o.Config))
	}
	store, err := history.Open(history.PathIn(cfg.StateDir), history.Options{})
	if err != nil {
		return fmt.Errorf("opening the run history in %s: %w (is another daemon running?)", cfg.StateDir, err)
	}
	defer store.Close()
	d, err := daemon.New(cfg, daemon.Options{
		Clock: o.clock, Recorder: store, Reader: store, Log: log,
		Watchdog: func(c driver.Config) *watchdog.Client { return daemonWatchdog(g, c) },
		MaxJobs:  o.MaxJobs, MaxPerHost: o.MaxPerHost, Grace: o.Grace, Timeout: g.timeout(),
		Format: g.tsFormat(), Version: Version, HoldFrozen: o.holdFrozen,
	})
	if err != nil {
		return usage(err)
	}
	var addr net.Addr
	if o.Listen != "" {
		tlsCfg, err := mountDashboard(d, store, cfg, o.Listen, log)
		if err != nil {
			return usage(err)
		}
		ln, err := net.Listen("tcp", o.Listen)
		if err != nil {
			return usage(fmt.Errorf("--listen %s: %w", o.Listen, err))
		}
		if tlsCfg != nil {
			ln = tls.NewListener(ln, tlsCfg)
		}
		srv := &http.Server{Handler: d.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server stopped", "err", err)
			}
		}()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
		addr = ln.Addr()
		log.Info("serving metrics", "addr", addr.String(), "path", "/metrics")
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-hup:
				log.Info("SIGHUP: reloading the policy file", "path", o.Config)
				_ = d.ReloadWith(load)
			case <-ctx.Done():
				return
			}
		}
	}()
	if o.started != nil {
		o.started(d, addr)
	}
	if o.Once {
		err := d.RunOnce(ctx)
		d.Close()
		return err
	}
	return d.Run(ctx)
}

// daemonWatchdog returns a freeze watchdog for connection c: this executable,
// started with the connection's settings. Secrets travel in the environment.
func daemonWatchdog(g *GlobalOptions, c driver.Config) *watchdog.Client {
	return &watchdog.Client{Command: func() *exec.Cmd {
		exe, err := os.Executable()
		if err != nil {
			exe = os.Args[0]
		}
		cmd := exec.Command(exe, "--host", c.Host, "--timeout", strconv.Itoa(int(c.Timeout/time.Second)),
			"--fingerprint", c.Fingerprint, "--insecure="+strconv.FormatBool(c.Insecure), watchdogCommandName)
		cmd.Env = append(os.Environ(), "AUTOSNAP_USERNAME="+c.Username, "AUTOSNAP_PASSWORD="+c.Password,
			"AUTOSNAP_API_TOKEN="+c.APIToken)
		return cmd
	}}
}
