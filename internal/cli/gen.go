package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// newGenCommand is the hidden `autosnap gen`: it writes the man pages and shell
// completions of this very binary's command tree, so what is packaged always matches
// what was built (`make deb` runs it on bin/autosnap).
func newGenCommand(g *GlobalOptions) *cobra.Command {
	gen := &cobra.Command{
		Use:    "gen",
		Short:  "Generate man pages and shell completions (for packagers)",
		Hidden: true,
		Args:   cobra.NoArgs,
	}
	gen.AddCommand(&cobra.Command{
		Use:   "man DIR",
		Short: "Write one man page (section 1) per command into DIR",
		Long: `Write one man page (section 1) per command into DIR: autosnap.1, autosnap-snap.1 …
(hidden commands have none). The date in the header is
$SOURCE_DATE_EPOCH when set, else the commit time of the build, so a rebuild of the
same source gives the same pages.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return genMan(cmd.Root(), args[0], ReadBuildInfo())
		},
	}, &cobra.Command{
		Use:   "completion DIR",
		Short: "Write bash (autosnap), zsh (_autosnap) and fish (autosnap.fish) completions into DIR",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return genCompletion(cmd.Root(), args[0])
		},
	})
	return gen
}

// genEnvCheck refuses to document defaults taken from the environment: the flags
// read AUTOSNAP_HOST, AUTOSNAP_PASSWORD … as their defaults, and a generated page or
// completion would then show (and ship) that value — possibly a secret.
func genEnvCheck() error {
	var set []string
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "AUTOSNAP_") {
			set = append(set, name)
		}
	}
	if len(set) > 0 {
		return usage(fmt.Errorf("gen: %s set: flags take their defaults from these variables and the generated files would show them; unset them (e.g. env -i PATH=\"$PATH\" autosnap gen …)", strings.Join(set, ", ")))
	}
	return nil
}

// genMan writes root's man pages into dir (created 0755: the pages are public).
func genMan(root *cobra.Command, dir string, b BuildInfo) error {
	if err := genEnvCheck(); err != nil {
		return err
	}
	date, err := manDate(os.Getenv("SOURCE_DATE_EPOCH"), b.CommitTime, time.Now())
	if err != nil {
		return usage(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("gen man: %w", err)
	}
	disableAutoGenTag(root)
	header := &doc.GenManHeader{Section: "1", Date: &date, Source: "autosnap " + b.Version, Manual: "autosnap manual"}
	if err := doc.GenManTree(root, header, dir); err != nil {
		return fmt.Errorf("gen man: writing pages into %s: %w", dir, err)
	}
	return nil
}

// manDate is the date in the pages' header: SOURCE_DATE_EPOCH (reproducible builds),
// else the commit time of the build, else now.
func manDate(epoch, commitTime string, now time.Time) (time.Time, error) {
	if epoch != "" {
		sec, err := strconv.ParseInt(epoch, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: not a number of seconds: %w", epoch, err)
		}
		return time.Unix(sec, 0).UTC(), nil
	}
	if t, err := time.Parse(time.RFC3339, commitTime); err == nil {
		return t.UTC(), nil
	}
	return now.UTC(), nil
}

func disableAutoGenTag(c *cobra.Command) {
	c.DisableAutoGenTag = true
	for _, sub := range c.Commands() {
		disableAutoGenTag(sub)
	}
}

// genCompletion writes cobra's completion scripts for bash, zsh and fish into dir,
// named as each shell's completion directory expects them.
func genCompletion(root *cobra.Command, dir string) error {
	if err := genEnvCheck(); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("gen completion: %w", err)
	}
	for _, c := range []struct {
		file string
		gen  func(f *os.File) error
	}{
		{"autosnap", func(f *os.File) error { return root.GenBashCompletionV2(f, true) }},
		{"_autosnap", func(f *os.File) error { return root.GenZshCompletion(f) }},
		{"autosnap.fish", func(f *os.File) error { return root.GenFishCompletion(f, true) }},
	} {
		path := filepath.Join(dir, c.file)
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return fmt.Errorf("gen completion: %w", err)
		}
		err = c.gen(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("gen completion: writing %s: %w", path, err)
		}
	}
	return nil
}
