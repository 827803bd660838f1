package cli

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/driver/qmp"
	"github.com/autosnap/autosnap/internal/watchdog"
)

// watchdogCommandName is the hidden command a run re-executes itself as, to guard
// frozen guests from a separate process.
const watchdogCommandName = "__freeze-watchdog"

func newWatchdogCommand(g *GlobalOptions) *cobra.Command {
	var bound time.Duration
	cmd := &cobra.Command{
		Use:    watchdogCommandName,
		Short:  "internal: thaws guests if the autosnap run that froze them dies",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runWatchdog(g, bound)
		},
	}
	cmd.Flags().DurationVar(&bound, "bound", watchdog.DefaultBound, "longest time a guest may stay frozen")
	return cmd
}

// runWatchdog serves the protocol on stdin/stdout. It ignores the run's context: it
// must outlive the run it guards.
func runWatchdog(g *GlobalOptions, bound time.Duration) error {
	ctx := context.Background()
	d, err := g.connect(ctx)
	if err != nil {
		fmt.Fprintf(os.Stdout, "error %v\n", err)
		return err
	}
	// conn is the current connection; thaw replaces it when the hypervisor went away
	// (a libvirtd restart drops every client) so that a frozen guest is still thawed.
	var cmu sync.Mutex
	conn := d
	defer func() { conn.Close() }()
	if _, ok := d.(driver.Quiescer); !ok {
		fmt.Fprintln(os.Stdout, "error driver cannot thaw")
		return fmt.Errorf("the %s driver cannot thaw guests", d.Name())
	}
	current := func() driver.Driver {
		cmu.Lock()
		defer cmu.Unlock()
		return conn
	}
	reconnect := func(ctx context.Context, old driver.Driver) error {
		cmu.Lock()
		defer cmu.Unlock()
		if conn != old {
			return nil // another thaw reconnected already
		}
		nd, err := g.connect(ctx)
		if err != nil {
			return err
		}
		old.Close()
		conn = nd
		return nil
	}
	// Resolve guests up front so an emergency thaw is a single call.
	var mu sync.Mutex
	known := map[string]driver.Guest{}
	refresh := func(ctx context.Context) error {
		guests, err := current().Guests(ctx)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for _, gu := range guests {
			known[gu.Key()] = gu
		}
		return nil
	}
	if err := refresh(ctx); err != nil {
		fmt.Fprintf(os.Stdout, "error %v\n", err)
		return err
	}
	lookup := func(ctx context.Context, key string) (driver.Guest, error) {
		mu.Lock()
		gu, ok := known[key]
		mu.Unlock()
		if !ok {
			if err := refresh(ctx); err != nil {
				return driver.Guest{}, err
			}
			mu.Lock()
			gu, ok = known[key]
			mu.Unlock()
			if !ok {
				return driver.Guest{}, fmt.Errorf("guest %s not found", key)
			}
		}
		return gu, nil
	}
	thaw := func(ctx context.Context, key string) error {
		gu, err := lookup(ctx, key)
		if err != nil {
			return err
		}
		c := current()
		_, err = c.(driver.Quiescer).Thaw(ctx, gu)
		if err != nil {
			// A dead connection fails every call: probe it, and reconnect if so.
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, perr := c.Guests(pctx)
			cancel()
			if perr != nil {
				if rerr := reconnect(ctx, c); rerr != nil {
					return fmt.Errorf("%w; reconnecting: %v", err, rerr)
				}
			}
		}
		return err
	}
	// resume runs CPUs a run stopped again (drivers that stop CPUs implement it).
	resume := func(ctx context.Context, key string) error {
		gu, err := lookup(ctx, key)
		if err != nil {
			return err
		}
		var d driver.Driver = current()
		if f, ok := d.(*driver.Fleet); ok {
			if d, err = f.Member(gu); err != nil {
				return err
			}
		}
		r, ok := d.(resumer)
		if !ok {
			return fmt.Errorf("the %s driver cannot resume guests", d.Name())
		}
		return r.ResumeStopped(ctx, gu)
	}
	return watchdog.ServeActions(os.Stdin, os.Stdout, bound,
		map[string]watchdog.ThawFunc{watchdog.ActionThaw: thaw, watchdog.ActionResume: resume}, os.Stderr)
}

// resumer is a driver that stops guests' CPUs itself and can resume them for the
// watchdog when the run that stopped them died (qmp.Driver.ResumeStopped).
type resumer interface {
	ResumeStopped(ctx context.Context, g driver.Guest) error
}

// The QMP driver arms this executable as its watchdog around the CPU stop of a
// multi-disk backup.
func init() {
	qmp.GuardCommand = func(host string) *exec.Cmd {
		exe, err := os.Executable()
		if err != nil {
			exe = os.Args[0]
		}
		return exec.Command(exe, "--host", host, watchdogCommandName)
	}
}

// newWatchdogClient returns a client that starts this executable as the watchdog with
// the run's connection settings. Secrets travel in the environment, not in argv.
func (g *GlobalOptions) newWatchdogClient() *watchdog.Client {
	return &watchdog.Client{Command: func() *exec.Cmd {
		exe, err := os.Executable()
		if err != nil {
			exe = os.Args[0]
		}
		cmd := exec.Command(exe, "--host", g.Host, "--timeout", strconv.Itoa(g.Timeout),
			"--fingerprint", g.Fingerprint, "--insecure="+strconv.FormatBool(g.Insecure || !g.ValidateCert),
			watchdogCommandName)
		cmd.Env = append(os.Environ(), "AUTOSNAP_USERNAME="+g.Username, "AUTOSNAP_PASSWORD="+g.Password, "AUTOSNAP_API_TOKEN="+g.APIToken)
		return cmd
	}}
}
