// Package cli holds autosnap's commands: each file defines one command's options, its
// flags and a run function that tests call directly. Logic lives in the engine, driver
// and pure packages; commands only parse, connect, call and print.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/report"
	"github.com/autosnap/autosnap/internal/secret"
	"github.com/autosnap/autosnap/internal/selector"
)

// Version is set at build time with -ldflags "-X …/internal/cli.Version=…".
var Version = "dev"

// GlobalOptions are the flags that come before the command, cv4pve-autosnap style.
type GlobalOptions struct {
	Host            string
	VMID            string
	Timeout         int // seconds per operation
	TimestampFormat string
	Output          string
	DryRun          bool
	LogLevel        string
	Debug           bool
	MaxParallel     int
	Username        string
	Password        string
	APIToken        string
	Fingerprint     string
	CAFile          string
	AgentSocket     string
	Insecure        bool
	ValidateCert    bool
	IgnoreMissing   bool
	// MaxPercStorage is --max-perc-storage given with a command other than snap:
	// cv4pve-autosnap takes it before any command; snap's own flag of the same name
	// receives it there (a command's flag shadows the inherited one).
	MaxPercStorage float64

	stdout io.Writer
	stderr io.Writer
	// ran is set when a command's RunE starts: errors before that are usage errors.
	ran bool
	// unmatched are the selection tokens that matched no guest, in the selection named
	// by unmatchedIn (see missing).
	unmatched   []string
	unmatchedIn string
	// brokenHook is the --script that could not run; the run fails with it at the end.
	brokenHook error
	// tagsRead is set once a selection read the guests' tags (see pick).
	tagsRead bool
	log      *slog.Logger
	// openDriver is replaceable in tests; nil uses driver.Open.
	openDriver func(ctx context.Context, hosts string, cfg driver.Config) (driver.Driver, error)
	// adjustJob, when set (by tests, through execute), changes a snap or clean job just
	// before it runs, e.g. to set engine.Job.HoldFrozen without a command-line flag.
	adjustJob func(*engine.Job)
	// compat is the output mode, native or cv4pve (compat.go).
	compat compatState
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// NewRootCommand builds the autosnap command tree writing to stdout and stderr.
func NewRootCommand(stdout, stderr io.Writer) (*cobra.Command, *GlobalOptions) {
	g := &GlobalOptions{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "autosnap",
		Short: "Automatic, retention-managed snapshots of KVM/QEMU virtual machines",
		Long: `autosnap takes automatic, retention-managed snapshots of KVM/QEMU guests.

Hosts (--host):
  libvirt     qemu:///system (default), qemu:///session, qemu+ssh://user@host/system,
              qemu+tls://host/system. Several comma-separated libvirt hosts form a
              fleet: each host's guests are candidates and the host name is the node.
  Proxmox VE  HOST[:PORT][,HOST2…] or pve://HOST[:PORT] (port 8006), with --api-token
              or --username/--password. The hosts are one cluster: the first that
              answers is used, the next ones take over if it fails.
  QEMU (QMP)  qmp:///DIR: every NAME.qmp socket in DIR is a guest NAME, its agent
              NAME.qga; qmp:///PATH/VM.qmp for one guest (agent: --agent-socket).
              Comma-separated entries form a fleet. See docs/qmp.md.

Global flags go before or after the command:
  autosnap --vmid @all snap --label hourly --keep 24

Option files: @FILE anywhere on the line reads options from FILE, one or more per
line, '#' starts a comment line, "double quotes" group words (cv4pve-autosnap's
response files; keep credentials there, mode 0600).

Environment: AUTOSNAP_HOST, AUTOSNAP_USERNAME, AUTOSNAP_PASSWORD, AUTOSNAP_API_TOKEN
set the flags of the same name. --password file:PATH reads the password from a file.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return g.setup()
		},
	}
	// --version prints the bare version, as cv4pve-autosnap (System.CommandLine) does.
	root.Version = Version
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usage(err) })
	root.SetHelpTemplate(root.HelpTemplate() + exitStatusHelp)

	f := root.PersistentFlags()
	f.StringVar(&g.Host, "host", envOr("AUTOSNAP_HOST", driver.DefaultHost), "hypervisor: libvirt URI(s), or Proxmox VE HOST[:PORT] list, comma-separated (env AUTOSNAP_HOST)")
	f.StringVar(&g.VMID, "vmid", "", "guests: all, @all-NODE, @node-NODE, @pool-NAME, @tag-NAME, id, a:b, name, %part%, start%, %end, UUID; -TOKEN excludes")
	f.BoolVar(&g.IgnoreMissing, "ignore-missing", false, "a --vmid token that matches no guest is only a warning (by default the run exits 1 after doing the rest)")
	f.IntVar(&g.Timeout, "timeout", 30, "seconds allowed for each operation: connecting, each call to the hypervisor, a snapshot, a merge without progress (libvirt), waiting for a guest locked by another run")
	f.StringVar(&g.TimestampFormat, "timestamp-format", "yyMMddHHmmss", "timestamp in snapshot names, a .NET custom format: yy yyyy MM dd HH mm ss f…fffffff; other letters, 'quoted' text and \\x are literals")
	f.StringVarP(&g.Output, "output", "o", "text", "output: "+strings.Join(report.Formats(), ", "))
	f.BoolVar(&g.DryRun, "dry-run", false, "show what would be done; change nothing, run no hooks")
	f.StringVar(&g.LogLevel, "log-level", "warn", "log level: debug, info, warn, error")
	f.BoolVar(&g.Debug, "debug", false, "same as --log-level debug")
	f.IntVar(&g.MaxParallel, "max-parallel", 4, "guests processed at once")
	f.StringVar(&g.Username, "username", envOr("AUTOSNAP_USERNAME", ""), "user for hypervisors that need one (env AUTOSNAP_USERNAME)")
	f.StringVar(&g.Password, "password", envOr("AUTOSNAP_PASSWORD", ""), "password, or file:PATH (plain text, or cv4pve-autosnap's encrypted file) (env AUTOSNAP_PASSWORD)")
	f.StringVar(&g.APIToken, "api-token", envOr("AUTOSNAP_API_TOKEN", ""), "API token USER@REALM!ID=UUID (env AUTOSNAP_API_TOKEN)")

	f.StringVar(&g.Fingerprint, "fingerprint", envOr("AUTOSNAP_FINGERPRINT", ""), "accept the server certificate with this SHA-256 fingerprint (self-signed Proxmox VE)")
	f.StringVar(&g.AgentSocket, "agent-socket", "", "guest agent socket of a single-socket --host qmp:///PATH/VM.qmp (default: the same name with .qga)")
	f.StringVar(&g.CAFile, "ca-file", envOr("AUTOSNAP_CA_FILE", ""), "also trust the CA certificates in this PEM file, e.g. a copy of the Proxmox VE cluster CA /etc/pve/pve-root-ca.pem, which covers every node (env AUTOSNAP_CA_FILE)")
	f.BoolVar(&g.Insecure, "insecure", false, "do not verify TLS certificates (dangerous; prefer --fingerprint)")
	f.Float64Var(&g.MaxPercStorage, "max-perc-storage", 95, "snap: fail a guest whose storage is fuller than this percentage (accepted with every command, as cv4pve-autosnap does)")
	f.BoolVar(&g.ValidateCert, "validate-certificate", true, "verify TLS certificates (cv4pve-autosnap compatibility; --validate-certificate=false equals --insecure)")
	addCompatFlags(f, g)

	root.AddCommand(newVersionCommand(g), newVMCommand(g), newSnapCommand(g), newCleanCommand(g), newStatusCommand(g), newSnapshotCommand(g), newWatchdogCommand(g),
		newBackupCommand(g), newRestoreCommand(g), newBitmapsCommand(g),
		newPolicyCommand(g), newDaemonCommand(g), newHistoryCommand(g), newMonitorCommand(g))
	root.AddCommand(newGenCommand(g)) // hidden: man pages and completions for packagers (gen.go)
	markRun(root, &g.ran)
	return root, g
}

// markRun wraps every command's RunE so that *ran tells whether one started.
func markRun(c *cobra.Command, ran *bool) {
	if run := c.RunE; run != nil {
		c.RunE = func(cmd *cobra.Command, args []string) error {
			*ran = true
			return run(cmd, args)
		}
	}
	for _, sub := range c.Commands() {
		markRun(sub, ran)
	}
}

func (g *GlobalOptions) setup() error {
	level := slog.LevelWarn
	if g.Debug {
		g.LogLevel = "debug"
	}
	switch strings.ToLower(g.LogLevel) {
	case "debug", "trace":
		level = slog.LevelDebug
	case "info", "information":
		level = slog.LevelInfo
	case "warn", "warning":
		level = slog.LevelWarn
	case "error", "critical":
		level = slog.LevelError
	default:
		return usage(fmt.Errorf("--log-level %q: use debug, info, warn or error", g.LogLevel))
	}
	g.log = slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: level}))
	if g.Timeout <= 0 {
		return usage(fmt.Errorf("--timeout must be a positive number of seconds"))
	}
	if g.MaxParallel < 1 || g.MaxParallel > 256 {
		return usage(fmt.Errorf("--max-parallel must be between 1 and 256"))
	}
	if g.MaxPercStorage <= 0 || g.MaxPercStorage > 100 {
		return usage(errors.New("--max-perc-storage must be in (0, 100]"))
	}
	if _, err := report.ParseFormat(g.Output); err != nil {
		return usage(err)
	}
	if _, err := naming.ParseFormat(g.TimestampFormat); err != nil {
		return usage(fmt.Errorf("--timestamp-format: %w", err))
	}
	pw, err := secret.Resolve(g.Password)
	if err != nil {
		return usage(fmt.Errorf("--password: %w", err))
	}
	g.Password = pw
	tok, err := secret.Resolve(g.APIToken)
	if err != nil {
		return usage(fmt.Errorf("--api-token: %w", err))
	}
	g.APIToken = tok
	return nil
}

func (g *GlobalOptions) timeout() time.Duration { return time.Duration(g.Timeout) * time.Second }

func (g *GlobalOptions) format() report.Format {
	f, _ := report.ParseFormat(g.Output)
	return f
}

// machine reports whether stdout carries JSON, so human-readable lines must go elsewhere.
func (g *GlobalOptions) machine() bool {
	return g.format() == report.FormatJSON || g.format() == report.FormatJSONPretty
}

func (g *GlobalOptions) tsFormat() naming.Format {
	f, _ := naming.ParseFormat(g.TimestampFormat)
	return f
}

// connect opens the driver for --host within --timeout.
func (g *GlobalOptions) connect(ctx context.Context) (driver.Driver, error) {
	open := g.openDriver
	if open == nil {
		open = driver.Open
	}
	cfg := driver.Config{Timeout: g.timeout(), Username: g.Username, Password: g.Password, APIToken: g.APIToken,
		Fingerprint: g.Fingerprint, CAFile: g.CAFile, AgentSocket: g.AgentSocket, Insecure: g.Insecure || !g.ValidateCert}
	if cfg.Insecure {
		fmt.Fprintln(g.stderr, "WARNING: TLS certificate verification is OFF (--insecure): anyone on the network path can read your credentials; use --fingerprint instead")
	}
	cctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	g.log.Debug("connecting", "host", g.Host)
	d, err := open(cctx, g.Host, cfg)
	if err != nil {
		if errors.Is(err, driver.ErrConnect) {
			return nil, err
		}
		return nil, usage(err)
	}
	return d, nil
}

// selectGuests lists the connection's guests and applies --vmid. An empty --vmid
// selects every guest when allowEmpty, and is a usage error otherwise. Tokens that
// match no guest are warned about here; the command returns g.missing() after its work.
func (g *GlobalOptions) selectGuests(ctx context.Context, d driver.Driver, allowEmpty bool) ([]driver.Guest, error) {
	expr := g.VMID
	var sel *selector.Selector
	if strings.TrimSpace(expr) == "" {
		if !allowEmpty {
			return nil, usage(errors.New("--vmid is required: say which guests, e.g. --vmid @all or --vmid web1,web2 (it comes before the command)"))
		}
	} else {
		var err error
		if sel, err = selector.Parse(expr); err != nil {
			return nil, usage(fmt.Errorf("--vmid: %w", err))
		}
	}
	lctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	guests, err := g.listGuests(lctx, d, sel)
	if err != nil {
		return nil, err
	}
	if sel == nil {
		return guests, nil
	}
	return g.pick(ctx, d, "--vmid", sel, guests)
}

// Main runs autosnap with args and returns the exit status.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return execute(ctx, args, stdout, stderr, nil)
}

// execute is Main; setup, when not nil, adjusts the options before the command runs
// (tests inject a driver with it).
func execute(ctx context.Context, args []string, stdout, stderr io.Writer, setup func(*GlobalOptions)) int {
	root, g := NewRootCommand(stdout, stderr)
	if setup != nil {
		setup(g)
	}
	// @files and cv4pve's option spellings are resolved before cobra sees the line.
	g.compat.mode.scan(args)
	args, err := expandArgs(root, args, stderr)
	if err == nil {
		g.compat.mode.scan(args)
		root.SetArgs(args)
		err = root.ExecuteContext(ctx)
	}
	// cobra validates the command name, arguments and required flags before RunE;
	// anything that fails there is the command line's fault.
	if err != nil && !g.ran {
		err = usage(err)
	}
	// Unmatched --vmid tokens fail the run only now, after the command did its work
	// (and printed its report) for the guests that were selected.
	cmdErr := err
	var u usageError
	if !errors.As(err, &u) {
		err = errors.Join(err, g.missing(), g.brokenHook)
	}
	switch {
	case g.cv4pve():
		reportCV4PVE(cmdErr, stdout, stderr)
	case err != nil && !reported(err):
		fmt.Fprintf(stderr, "ERROR: %v\n", err)
	}
	return g.exitCode(err)
}
