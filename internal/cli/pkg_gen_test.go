package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/report"
)

// The toolchain's VCS stamp fills revision, commit time and modified; a binary built
// without -X reports its module version; without a stamp only the basics remain.
func TestBuildInfo(t *testing.T) {
	stamp := &debug.BuildInfo{GoVersion: "go1.99.1", Main: debug.Module{Path: "github.com/autosnap/autosnap", Version: "(devel)"},
		Settings: []debug.BuildSetting{{Key: "-trimpath", Value: "true"}, {Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"}, {Key: "vcs.time", Value: "2026-11-30T09:07:35Z"}, {Key: "vcs.modified", Value: "true"}}}
	got := buildInfo("v1.4.0-3-gabc", stamp, true, []string{"libvirt", "qmp"})
	want := BuildInfo{Version: "v1.4.0-3-gabc", Revision: "0123456789abcdef0123456789abcdef01234567", CommitTime: "2026-11-30T09:07:35Z",
		Modified: true, GoVersion: "go1.99.1", OS: runtime.GOOS, Arch: runtime.GOARCH, Drivers: []string{"libvirt", "qmp"}}
	if !equalBuildInfo(got, want) {
		t.Errorf("with a VCS stamp:\n got %+v\nwant %+v", got, want)
	}

	installed := &debug.BuildInfo{GoVersion: "go1.99.1", Main: debug.Module{Version: "v1.5.0"}}
	if got := buildInfo("dev", installed, true, nil); got.Version != "v1.5.0" || got.Revision != "" || got.Modified || got.Drivers == nil {
		t.Errorf("go install …@v1.5.0 without -X: %+v", got)
	}
	if got := buildInfo("v2", installed, true, nil); got.Version != "v2" {
		t.Errorf("-X wins over the module version: %+v", got)
	}
	if got := buildInfo("dev", stamp, true, nil); got.Version != "dev" {
		t.Errorf("(devel) is no version: %+v", got)
	}
	if got := buildInfo("dev", nil, false, nil); got.Version != "dev" || got.GoVersion != runtime.Version() || got.CommitTime != "" {
		t.Errorf("without build info: %+v", got)
	}
}

func equalBuildInfo(a, b BuildInfo) bool {
	return a.Version == b.Version && a.Revision == b.Revision && a.CommitTime == b.CommitTime && a.Modified == b.Modified &&
		a.GoVersion == b.GoVersion && a.OS == b.OS && a.Arch == b.Arch && slices.Equal(a.Drivers, b.Drivers)
}

// The text keeps the earlier first line; VCS lines appear only when known; the JSON
// formats print one object.
func TestVersionOutputGolden(t *testing.T) {
	b := BuildInfo{Version: "1.4.0", Revision: "0123abc", CommitTime: "2026-11-30T09:07:35Z", Modified: true,
		GoVersion: "go1.26.8", OS: "linux", Arch: "amd64", Drivers: []string{"libvirt", "proxmox", "qmp"}}
	for _, c := range []struct {
		f    report.Format
		b    BuildInfo
		want string
	}{
		{report.FormatText, b, "autosnap 1.4.0 (go1.26.8, linux/amd64)\ndrivers: libvirt, proxmox, qmp\nrevision: 0123abc (modified)\ncommit time: 2026-11-30T09:07:35Z\n"},
		{report.FormatMarkdown, BuildInfo{Version: "dev", GoVersion: "go1.26.8", OS: "linux", Arch: "arm64", Drivers: []string{}},
			"autosnap dev (go1.26.8, linux/arm64)\ndrivers: \n"},
		{report.FormatJSON, b, `{"version":"1.4.0","revision":"0123abc","commit_time":"2026-11-30T09:07:35Z","modified":true,"go_version":"go1.26.8","os":"linux","arch":"amd64","drivers":["libvirt","proxmox","qmp"]}` + "\n"},
		{report.FormatJSONPretty, BuildInfo{Version: "dev", GoVersion: "go1.26.8", OS: "linux", Arch: "amd64", Drivers: []string{}},
			"{\n  \"version\": \"dev\",\n  \"modified\": false,\n  \"go_version\": \"go1.26.8\",\n  \"os\": \"linux\",\n  \"arch\": \"amd64\",\n  \"drivers\": []\n}\n"},
	} {
		var out bytes.Buffer
		if err := runVersion(&out, c.f, c.b); err != nil || out.String() != c.want {
			t.Errorf("%s: %v\n got %q\nwant %q", c.f, err, out.String(), c.want)
		}
	}

	// Through the command line: this test binary's own build.
	r := mustRun(t, "version")
	if !strings.HasPrefix(r.stdout, "autosnap "+Version+" ("+runtime.Version()+", "+runtime.GOOS+"/"+runtime.GOARCH+")\ndrivers: ") {
		t.Errorf("autosnap version:\n%s", r.stdout)
	}
	var got BuildInfo
	if err := json.Unmarshal([]byte(mustRun(t, "-o", "json", "version").stdout), &got); err != nil || got.Version != Version || got.GoVersion != runtime.Version() {
		t.Errorf("autosnap -o json version: %+v, %v", got, err)
	}
}

func TestManDate(t *testing.T) {
	now := time.Date(2027, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		epoch, commit string
		want          time.Time
	}{
		{"1700000000", "2026-11-30T09:07:35Z", time.Unix(1700000000, 0).UTC()},
		{"", "2026-11-30T09:07:35Z", time.Date(2026, 11, 30, 9, 7, 35, 0, time.UTC)},
		{"", "", now},
		{"", "garbage", now},
	} {
		if got, err := manDate(c.epoch, c.commit, now); err != nil || !got.Equal(c.want) {
			t.Errorf("manDate(%q, %q) = %v, %v; want %v", c.epoch, c.commit, got, err, c.want)
		}
	}
	if _, err := manDate("yesterday", "", now); err == nil {
		t.Error("SOURCE_DATE_EPOCH=yesterday accepted")
	}
}

// visiblePages are the pages cobra's doc package writes: one per command a user can
// see; hidden ones (gen, the placeholders) and help get none.
func visiblePages(c *cobra.Command) []string {
	pages := []string{strings.ReplaceAll(c.CommandPath(), " ", "-") + ".1"}
	for _, sub := range c.Commands() {
		if sub.IsAvailableCommand() && !sub.IsAdditionalHelpTopicCommand() {
			pages = append(pages, visiblePages(sub)...)
		}
	}
	return pages
}

// `gen man` writes one dated page per visible command, headed with this version and
// without cobra's advert; `gen completion` writes the three shells' scripts.
func TestGenManAndCompletion(t *testing.T) {
	clearAutosnapEnv(t)
	t.Setenv("SOURCE_DATE_EPOCH", "1764493655") // 2025-11-30
	dir := t.TempDir()
	mustRun(t, "gen", "man", filepath.Join(dir, "man"))
	root, _ := NewRootCommand(io.Discard, io.Discard)
	root.InitDefaultCompletionCmd()
	want := visiblePages(root)
	slices.Sort(want)
	entries, err := os.ReadDir(filepath.Join(dir, "man"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, want) || !slices.Contains(got, "autosnap-snap.1") || slices.Contains(got, "autosnap-gen.1") {
		t.Errorf("pages:\n got %q\nwant %q", got, want)
	}
	for _, p := range got {
		b, _ := os.ReadFile(filepath.Join(dir, "man", p))
		title := strings.ToUpper(strings.TrimSuffix(p, ".1"))
		if head := ".nh\n.TH \"" + title + "\" \"1\" \"Nov 2025\" \"autosnap " + Version + "\" \"autosnap manual\"\n"; !strings.HasPrefix(string(b), head) {
			t.Errorf("%s starts %.120q, want %q", p, b, head)
		}
		if strings.Contains(string(b), "Auto generated") {
			t.Errorf("%s carries cobra's auto-generated tag", p)
		}
	}

	// Indented text of --help (the host table, command lines) stays as laid out, in a
	// no-fill example block (.EX), and is not read as markdown (a "[:PORT] (port 8006)" is no link).
	top, _ := os.ReadFile(filepath.Join(dir, "man", "autosnap.1"))
	for _, want := range []string{
		"\n.EX\n  libvirt     qemu:///system (default), qemu:///session, qemu+ssh://user@host/system,\n              qemu+tls://host/system.",
		"  Proxmox VE  HOST[:PORT][,HOST2…] or pve://HOST[:PORT] (port 8006), with --api-token\n",
		"\n.EX\n  autosnap --vmid @all snap --label hourly --keep 24\n",
	} {
		if !strings.Contains(string(top), want) {
			t.Errorf("autosnap.1 lacks %q:\n%s", want, top)
		}
	}

	mustRun(t, "gen", "completion", filepath.Join(dir, "comp"))
	for file, want := range map[string]string{"autosnap": "complete -o default -F __start_autosnap autosnap", "_autosnap": "#compdef autosnap", "autosnap.fish": "complete -c autosnap "} {
		b, err := os.ReadFile(filepath.Join(dir, "comp", file))
		if err != nil || !strings.Contains(string(b), want) {
			t.Errorf("%s: %v, lacks %q", file, err, want)
		}
	}
	if out, err := exec.Command("bash", "-n", filepath.Join(dir, "comp", "autosnap")).CombinedOutput(); err != nil {
		t.Errorf("bash -n on the bash completion: %v\n%s", err, out)
	}
}

// clearAutosnapEnv unsets every AUTOSNAP_* variable for the test (t.Setenv restores it).
func clearAutosnapEnv(t *testing.T) {
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "AUTOSNAP_") {
			t.Setenv(name, "")
			os.Unsetenv(name)
		}
	}
}

// A flag's default read from the environment (here a password) would be printed into
// every page as `(default "…")`: gen refuses, names the variable, not its value, and
// writes nothing.
func TestGenRefusesEnvironmentDefaults(t *testing.T) {
	clearAutosnapEnv(t)
	t.Setenv("AUTOSNAP_PASSWORD", "s3cret-pw")
	dir := filepath.Join(t.TempDir(), "man")
	for _, sub := range []string{"man", "completion"} {
		r := run(t, "gen", sub, dir)
		if r.code != ExitUsage || !strings.Contains(r.stderr, "AUTOSNAP_PASSWORD set") || strings.Contains(r.stdout+r.stderr, "s3cret") {
			t.Errorf("gen %s with AUTOSNAP_PASSWORD set: exit %d\n%s%s", sub, r.code, r.stdout, r.stderr)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("gen %s wrote %s anyway (%v)", sub, dir, err)
		}
	}
}
