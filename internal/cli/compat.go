package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/selector"
)

// CV4PVEName is the program name that selects cv4pve mode: `make install` and the
// package install a symlink of this name to autosnap.
const CV4PVEName = "cv4pve-autosnap"

// Compatibility modes (--compat).
const (
	compatNative = "native"
	compatCV4PVE = "cv4pve"
)

// compatState is the output mode and what cv4pve mode needs besides the options.
type compatState struct {
	mode compatMode
	// now is the clock of cv4pve mode's snapshot names and durations; nil is time.Now.
	now func() time.Time
	// parallelSet is set when --max-parallel was given: cv4pve mode otherwise
	// processes one guest at a time, as cv4pve-autosnap.
	parallelSet bool
}

// compatMode is the --compat flag's value: "native" (or empty) or "cv4pve".
type compatMode string

func (m *compatMode) String() string { return string(*m) }
func (m *compatMode) Type() string   { return "mode" }
func (m *compatMode) Set(s string) error {
	switch v := strings.ToLower(strings.TrimSpace(s)); v {
	case compatNative, "":
		*m = ""
	case compatCV4PVE, CV4PVEName:
		*m = compatCV4PVE
	default:
		return fmt.Errorf("--compat %q: use cv4pve or native", s)
	}
	return nil
}

// scan sets the mode from the --compat options in args (the last one wins, as when
// cobra parses them), before cobra does: a command line that fails to expand or
// parse then still fails as the mode it asks for does (exit 1 in cv4pve mode).
func (m *compatMode) scan(args []string) {
	for i, a := range args {
		if a == "--" {
			return
		}
		switch {
		case a == "--compat" && i+1 < len(args):
			_ = m.Set(args[i+1])
		case strings.HasPrefix(a, "--compat=") || strings.HasPrefix(a, "--compat:"):
			_ = m.Set(a[len("--compat="):])
		}
	}
}

// addCompatFlags registers --compat on the root's persistent flags.
func addCompatFlags(f *pflag.FlagSet, g *GlobalOptions) {
	f.Var(&g.compat.mode, "compat", "output and exit codes: native, or cv4pve (exactly as cv4pve-autosnap; also when run as "+CV4PVEName+", see docs/cv4pve-mode.md)")
}

// cv4pve reports whether the run is in cv4pve mode.
func (g *GlobalOptions) cv4pve() bool { return g.compat.mode == compatCV4PVE }

func (g *GlobalOptions) clock() time.Time {
	if g.compat.now != nil {
		return g.compat.now()
	}
	return time.Now()
}

// MainNamed is Main for a program invoked as name (argv[0]): as cv4pve-autosnap it
// starts in cv4pve mode, which --compat native turns off again.
func MainNamed(ctx context.Context, name string, args []string, stdout, stderr io.Writer) int {
	return execute(ctx, args, stdout, stderr, func(g *GlobalOptions) {
		if invokedAsCV4PVE(name) {
			g.compat.mode = compatCV4PVE
		}
	})
}

// invokedAsCV4PVE reports whether argv[0] names cv4pve-autosnap (any directory, and a
// .exe suffix as on Windows).
func invokedAsCV4PVE(argv0 string) bool {
	b := strings.TrimSuffix(filepath.Base(argv0), ".exe")
	return b == CV4PVEName
}

// reportCV4PVE prints the error a command returned in cv4pve mode where
// cv4pve-autosnap prints it: nothing when guests failed or none was selected (the
// output on stdout says so already), a command-line error on stderr (as
// System.CommandLine), anything else as "ERROR: message" on stdout (as its
// ExecuteAppAsync). A hook that cannot run was reported on stderr when the run began.
func reportCV4PVE(err error, stdout, stderr io.Writer) {
	var u usageError
	switch {
	case err == nil, errors.Is(err, engine.ErrGuestsFailed), errors.Is(err, selector.ErrNoMatch):
	case errors.As(err, &u):
		fmt.Fprintf(stderr, "ERROR: %v\n", err)
	default:
		fmt.Fprintf(stdout, "ERROR: %v\n", err)
	}
}
