package packaging

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/cli"
)

// debEnv is the environment of make, dpkg and the installed binary: the caller's
// without AUTOSNAP_* (flags take defaults from those), with the sbin directories dpkg
// looks for its helpers in.
func debEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AUTOSNAP_") && !strings.HasPrefix(kv, "PATH=") {
			env = append(env, kv)
		}
	}
	return append(env, "PATH="+os.Getenv("PATH")+":/usr/local/sbin:/usr/sbin:/sbin")
}

// tryCmd runs name and returns its stdout, or an error with both outputs.
func tryCmd(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = debEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w\n%s%s", name, strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String(), nil
}

func runCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := tryCmd(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// buildDeb runs `make deb` with its binary, generated files and package in dir and
// returns the package's path.
func buildDeb(t *testing.T, dir string) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dist := filepath.Join(dir, "dist")
	runCmd(t, "make", "-C", root, "deb", "BIN="+filepath.Join(dir, "bin", "autosnap"), "DIST="+dist)
	debs, _ := filepath.Glob(filepath.Join(dist, "autosnap_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("make deb made %q in %s, want one autosnap_*.deb", debs, dist)
	}
	return debs[0]
}

// dpkgRoot prepares an empty dpkg database under root, so that dpkg --root installs
// into it as into a clean system.
func dpkgRoot(t *testing.T, root string) {
	t.Helper()
	admin := filepath.Join(root, "var", "lib", "dpkg")
	for _, d := range []string{"info", "updates", "triggers", "alternatives"} {
		if err := os.MkdirAll(filepath.Join(admin, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"status", "available"} {
		if err := os.WriteFile(filepath.Join(admin, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// dpkg runs dpkg on the scratch root. Maintainer scripts run on the host's shell with
// $DPKG_ROOT set (--force-script-chrootless): the scratch root has no /bin/sh to chroot
// into, and the scripts are written for that (docs/packaging.md).
func dpkg(t *testing.T, root string, args ...string) string {
	t.Helper()
	return runCmd(t, "dpkg", append([]string{"--root=" + root, "--force-script-chrootless", "--force-unsafe-io"}, args...)...)
}

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return fi.Mode()
}

// manPages lists the page every command a user can see gets: autosnap.1,
// autosnap-snap.1 … (hidden commands and help have none, as cobra's doc package skips them).
func manPages(c *cobra.Command) []string {
	pages := []string{strings.ReplaceAll(c.CommandPath(), " ", "-") + ".1.gz"}
	for _, sub := range c.Commands() {
		if sub.IsAvailableCommand() && !sub.IsAdditionalHelpTopicCommand() {
			pages = append(pages, manPages(sub)...)
		}
	}
	return pages
}

func gunzip(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	b, err := io.ReadAll(z)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return string(b)
}

// TestDebInstall builds the Debian package with `make deb`, installs it with dpkg into
// a scratch root as on a clean Debian 12, and checks that the binary runs (also as
// cv4pve-autosnap), the units, man pages, completions, the example policy file and the
// state directory are in place with their modes, that the shipped policy file passes
// `autosnap policy check`, that a changed policy file survives a reinstall, and that a
// purge removes everything.
func TestDebInstall(t *testing.T) {
	dir := t.TempDir()
	deb := buildDeb(t, dir)

	info := runCmd(t, "dpkg-deb", "--field", deb, "Package", "Architecture", "Recommends", "Depends")
	for _, want := range []string{"Package: autosnap\n", "Recommends: qemu-utils\n"} {
		if !strings.Contains(info, want) {
			t.Errorf("control fields lack %q:\n%s", want, info)
		}
	}
	if strings.Contains(info, "Depends:") {
		t.Errorf("the static binary needs no Depends:\n%s", info)
	}
	if conf := runCmd(t, "dpkg-deb", "--info", deb, "conffiles"); strings.TrimSpace(conf) != "/etc/autosnap/autosnap.yaml" {
		t.Errorf("conffiles %q, want /etc/autosnap/autosnap.yaml", conf)
	}

	root := filepath.Join(dir, "root")
	dpkgRoot(t, root)
	dpkg(t, root, "-i", deb)
	if st := runCmd(t, "dpkg", "--root="+root, "-s", "autosnap"); !strings.Contains(st, "Status: install ok installed") {
		t.Fatalf("dpkg -s autosnap after dpkg -i:\n%s", st)
	}
	in := func(p string) string { return filepath.Join(root, p) }

	// The binary, and the symlink that selects cv4pve mode by argv[0].
	bin := in("/usr/bin/autosnap")
	if m := mode(t, bin); m != 0o755 {
		t.Errorf("/usr/bin/autosnap mode %v, want 0755", m)
	}
	if v := runCmd(t, bin, "version"); !strings.HasPrefix(v, "autosnap ") || !strings.Contains(v, "\ndrivers: libvirt, proxmox, qmp\n") {
		t.Errorf("autosnap version:\n%s", v)
	}
	var b cli.BuildInfo
	if err := json.Unmarshal([]byte(runCmd(t, bin, "-o", "json", "version")), &b); err != nil || b.Version == "" || b.GoVersion == "" || len(b.Drivers) != 3 {
		t.Errorf("autosnap -o json version: %+v, %v", b, err)
	}
	if l, err := os.Readlink(in("/usr/bin/cv4pve-autosnap")); err != nil || l != "autosnap" {
		t.Errorf("/usr/bin/cv4pve-autosnap -> %q, %v; want -> autosnap", l, err)
	}
	if v := runCmd(t, in("/usr/bin/cv4pve-autosnap"), "--version"); strings.TrimSpace(v) != b.Version {
		t.Errorf("cv4pve-autosnap --version printed %q, want %q", v, b.Version)
	}

	// Units: in place, and valid for systemd against the installed tree (the binary
	// ExecStart names must exist there).
	for _, u := range []string{"autosnap.service", "autosnap-snap@.service", "autosnap-snap@.timer"} {
		if m := mode(t, in("/lib/systemd/system/"+u)); m != 0o644 {
			t.Errorf("%s mode %v, want 0644", u, m)
		}
	}
	unit, _ := os.ReadFile(in("/lib/systemd/system/autosnap.service"))
	for _, want := range []string{"\nExecStart=/usr/bin/autosnap daemon --config /etc/autosnap/autosnap.yaml --grace 10m\n", "\nKillSignal=SIGTERM\n", "\nRestart=on-failure\n", "\nStateDirectoryMode=0700\n"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("autosnap.service lacks %q", strings.TrimSpace(want))
		}
	}
	// The installed binary accepts the unit's command line (its flags are parsed before
	// --help is honoured, so a value it cannot read fails here, not at boot).
	for _, line := range strings.Split(string(unit), "\n") {
		if cmdline, ok := strings.CutPrefix(line, "ExecStart="); ok {
			args := strings.Fields(cmdline)
			if out, err := exec.Command(in(args[0]), append(args[1:], "--help")...).CombinedOutput(); err != nil {
				t.Errorf("the unit's ExecStart is refused by the installed binary: %v\n%s", err, out)
			}
		}
	}
	verify := filepath.Join(dir, "verify")
	if err := os.Mkdir(verify, 0o755); err != nil {
		t.Fatal(err)
	}
	var units []string
	for _, u := range []string{"autosnap.service", "autosnap-snap@.service", "autosnap-snap@.timer"} {
		// The host has no /usr/bin/autosnap: the copies name the installed one.
		s, _ := os.ReadFile(in("/lib/systemd/system/" + u))
		units = append(units, filepath.Join(verify, u))
		if err := os.WriteFile(units[len(units)-1], bytes.ReplaceAll(s, []byte("/usr/bin/autosnap"), []byte(bin)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := tryCmd("systemd-analyze", append([]string{"verify", "--man=no"}, units...)...); err != nil || out != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	// A man page for every command a user can see, gzipped troff.
	top, _ := cli.NewRootCommand(io.Discard, io.Discard)
	top.InitDefaultCompletionCmd()
	pages := manPages(top)
	if len(pages) < 20 {
		t.Fatalf("only %d commands to document: %q", len(pages), pages)
	}
	for _, p := range pages {
		path := in("/usr/share/man/man1/" + p)
		if m := mode(t, path); m != 0o644 {
			t.Errorf("%s mode %v, want 0644", p, m)
			continue
		}
		page := gunzip(t, path)
		name := strings.TrimSuffix(p, ".1.gz")
		if !strings.HasPrefix(page, ".nh\n.TH \""+strings.ToUpper(name)+"\" \"1\"") || !strings.Contains(page, "\n.SH NAME\n"+name+" ") {
			t.Errorf("%s is not the man page of %s:\n%.300s", p, name, page)
		}
	}
	if l, err := os.Readlink(in("/usr/share/man/man1/cv4pve-autosnap.1.gz")); err != nil || l != "autosnap.1.gz" {
		t.Errorf("cv4pve-autosnap.1.gz -> %q, %v; want -> autosnap.1.gz", l, err)
	}
	installed, _ := filepath.Glob(in("/usr/share/man/man1/*.1.gz"))
	if len(installed) != len(pages)+1 {
		t.Errorf("%d man pages installed, want %d (one per command plus cv4pve-autosnap.1.gz)", len(installed), len(pages)+1)
	}

	// Completions where bash-completion, zsh and fish look for them.
	for _, c := range []struct{ path, want string }{
		{"/usr/share/bash-completion/completions/autosnap", "complete -o default -F __start_autosnap autosnap"},
		{"/usr/share/zsh/vendor-completions/_autosnap", "#compdef autosnap"},
		{"/usr/share/fish/vendor_completions.d/autosnap.fish", "complete -c autosnap "},
	} {
		if m := mode(t, in(c.path)); m != 0o644 {
			t.Errorf("%s mode %v, want 0644", c.path, m)
		}
		if s, _ := os.ReadFile(in(c.path)); !strings.Contains(string(s), c.want) {
			t.Errorf("%s lacks %q", c.path, c.want)
		}
	}
	runCmd(t, "bash", "-n", in("/usr/share/bash-completion/completions/autosnap"))

	// The policy file (a conffile, root only), the state directory made by postinst.
	conf := in("/etc/autosnap/autosnap.yaml")
	for path, want := range map[string]fs.FileMode{conf: 0o600, in("/etc/autosnap"): fs.ModeDir | 0o700, in("/var/lib/autosnap"): fs.ModeDir | 0o700} {
		if m := mode(t, path); m != want {
			t.Errorf("%s mode %v, want %v", path, m, want)
		}
	}
	example, _ := os.ReadFile("../examples/autosnap.yaml")
	if got, _ := os.ReadFile(conf); !bytes.Equal(got, example) || len(got) == 0 {
		t.Errorf("installed policy file differs from examples/autosnap.yaml:\n%s", got)
	}
	if _, err := os.Stat(in("/usr/share/doc/autosnap/packaging.md")); err != nil {
		t.Errorf("docs: %v", err)
	}
	if _, err := tryCmd(bin, "policy", "check", "--config", conf); err != nil {
		t.Errorf("the shipped policy file does not pass: %v", err)
	}

	// The admin's changes to the policy file survive a reinstall (upgrade path).
	changed := append(slices.Clone(example), []byte("# changed by the admin\n")...)
	if err := os.WriteFile(conf, changed, 0o600); err != nil {
		t.Fatal(err)
	}
	dpkg(t, root, "-i", deb)
	if got, _ := os.ReadFile(conf); !bytes.Equal(got, changed) {
		t.Errorf("reinstall replaced the changed policy file:\n%s", got)
	}

	// Purge takes everything, state included.
	dpkg(t, root, "--purge", "autosnap")
	for _, p := range []string{"/usr/bin/autosnap", "/usr/bin/cv4pve-autosnap", "/etc/autosnap/autosnap.yaml", "/var/lib/autosnap", "/lib/systemd/system/autosnap.service", "/usr/share/man/man1/autosnap.1.gz"} {
		if _, err := os.Lstat(in(p)); !os.IsNotExist(err) {
			t.Errorf("%s still there after purge (%v)", p, err)
		}
	}
}

// TestMakeInstall: `make install` puts the binary, the cv4pve-autosnap symlink, a man
// page per command and the completions under PREFIX (bash-completion, zsh
// site-functions, fish vendor_completions.d).
func TestMakeInstall(t *testing.T) {
	dir := t.TempDir()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(dir, "dest")
	runCmd(t, "make", "-C", root, "install", "DESTDIR="+dest, "PREFIX=/opt/as",
		"BIN="+filepath.Join(dir, "bin", "autosnap"), "GEN="+filepath.Join(dir, "gen"))
	in := func(p string) string { return filepath.Join(dest, "opt", "as", p) }
	if v := runCmd(t, in("bin/autosnap"), "version"); !strings.HasPrefix(v, "autosnap ") {
		t.Errorf("installed autosnap version: %q", v)
	}
	for link, want := range map[string]string{"bin/cv4pve-autosnap": "autosnap", "share/man/man1/cv4pve-autosnap.1.gz": "autosnap.1.gz"} {
		if l, err := os.Readlink(in(link)); err != nil || l != want {
			t.Errorf("%s -> %q, %v; want -> %s", link, l, err, want)
		}
	}
	top, _ := cli.NewRootCommand(io.Discard, io.Discard)
	top.InitDefaultCompletionCmd()
	for _, p := range manPages(top) {
		if page := gunzip(t, in("share/man/man1/"+p)); !strings.HasPrefix(page, ".nh\n.TH ") {
			t.Errorf("%s is no man page: %.100q", p, page)
		}
	}
	for _, p := range []string{"share/bash-completion/completions/autosnap", "share/zsh/site-functions/_autosnap", "share/fish/vendor_completions.d/autosnap.fish"} {
		if m := mode(t, in(p)); m != 0o644 {
			t.Errorf("%s mode %v, want 0644", p, m)
		}
	}
}
