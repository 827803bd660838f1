package cli

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/report"
)

// BuildInfo is what `autosnap version` reports. Version comes from the -X ldflag
// (Makefile VERSION, `git describe`), or from the module version of a `go install
// …@vX`; the VCS fields from the Go toolchain's build stamp (-buildvcs), empty when the
// binary was built without it (outside a checkout, or with -buildvcs=false).
type BuildInfo struct {
	Version    string   `json:"version"`
	Revision   string   `json:"revision,omitempty"`
	CommitTime string   `json:"commit_time,omitempty"` // RFC 3339, UTC
	Modified   bool     `json:"modified"`              // built from a work tree with uncommitted changes
	GoVersion  string   `json:"go_version"`
	OS         string   `json:"os"`
	Arch       string   `json:"arch"`
	Drivers    []string `json:"drivers"`
}

// ReadBuildInfo describes the running binary.
func ReadBuildInfo() BuildInfo {
	bi, ok := debug.ReadBuildInfo()
	return buildInfo(Version, bi, ok, driver.Registered())
}

// buildInfo combines the ldflag version with the toolchain's build stamp bi (ok is
// debug.ReadBuildInfo's second result).
func buildInfo(version string, bi *debug.BuildInfo, ok bool, drivers []string) BuildInfo {
	b := BuildInfo{Version: version, GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH, Drivers: drivers}
	if b.Drivers == nil {
		b.Drivers = []string{}
	}
	if !ok || bi == nil {
		return b
	}
	if bi.GoVersion != "" {
		b.GoVersion = bi.GoVersion
	}
	// A binary built without -X (go build, go install) still knows its module version.
	if (b.Version == "" || b.Version == "dev") && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		b.Version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.time":
			b.CommitTime = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		}
	}
	return b
}

// writeText prints the build info for people. The first line keeps the format of
// earlier versions ("autosnap VERSION (GO, OS/ARCH)") for scripts that read it.
func (b BuildInfo) writeText(w io.Writer) error {
	var s strings.Builder
	fmt.Fprintf(&s, "autosnap %s (%s, %s/%s)\n", b.Version, b.GoVersion, b.OS, b.Arch)
	fmt.Fprintf(&s, "drivers: %s\n", strings.Join(b.Drivers, ", "))
	if b.Revision != "" {
		fmt.Fprintf(&s, "revision: %s", b.Revision)
		if b.Modified {
			s.WriteString(" (modified)")
		}
		s.WriteString("\n")
	}
	if b.CommitTime != "" {
		fmt.Fprintf(&s, "commit time: %s\n", b.CommitTime)
	}
	_, err := io.WriteString(w, s.String())
	return err
}

func newVersionCommand(g *GlobalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print autosnap's version, build and the drivers it was built with",
		Long: `Print autosnap's version, the source revision and commit time it was built from
(with "modified" when the work tree had uncommitted changes), the Go version, the
platform and the drivers linked in. -o json (or jsonpretty) prints one JSON object.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runVersion(g.stdout, g.format(), ReadBuildInfo())
		},
	}
}

// runVersion prints b as text, or as one JSON object for the JSON formats; the table
// formats print the text form.
func runVersion(w io.Writer, f report.Format, b BuildInfo) error {
	switch f {
	case report.FormatJSON, report.FormatJSONPretty:
		return report.JSON(w, f == report.FormatJSONPretty, b)
	default:
		return b.writeText(w)
	}
}
