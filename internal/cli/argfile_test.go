package cli

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/autosnap/autosnap/internal/pveemu"
)

func writeArgFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Lines are split as System.CommandLine's CommandLineStringSplitter splits them.
func TestSplitCommandLine(t *testing.T) {
	for _, c := range []struct {
		line string
		want []string
	}{
		{"--host pve1", []string{"--host", "pve1"}},
		{"--host=pve1", []string{"--host=pve1"}},
		{"a \t b", []string{"a", "b"}},
		{`--password "two words"`, []string{"--password", "two words"}},
		{`--password="two words"`, []string{"--password=two words"}},
		{`"a"b`, []string{"a", "b"}},
		{`""`, []string{""}},
		{`x "" y`, []string{"x", "", "y"}},
		{`a"b c"d e`, []string{"ab cd", "e"}},
		{`"open quote`, nil},
		{`word "open quote`, []string{"word"}},
		{`it's`, []string{"it's"}},
		{`c:\path\x`, []string{`c:\path\x`}},
		{"a\u00a0b", []string{"a", "b"}},
	} {
		if got := splitCommandLine(c.line); !slices.Equal(got, c.want) {
			t.Errorf("splitCommandLine(%q) = %q, want %q", c.line, got, c.want)
		}
	}
}

// A response file: one option per line or several, comments, blank lines, CRLF and a
// byte order mark, nested @files; the result is expanded where the @ stood.
func TestExpandArgFiles(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	writeArgFile(t, dir, "conn", "\xef\xbb\xbf# connection\r\n--host\r\npve1:8006,pve2\r\n\r\n   # indented comment\r\n--api-token=root@pam!a=b c\r\n--fingerprint \"AA:BB\"\r\n@more\r\n")
	writeArgFile(t, dir, "more", "  --timeout   60  \n--vmid\n@all\n")
	root, _ := NewRootCommand(io.Discard, io.Discard)
	got, err := expandArgs(root, []string{"@conn", "status", "--label", "@daily", "--", "@conn"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"--host", "pve1:8006,pve2", "--api-token=root@pam!a=b", "c", "--fingerprint", "AA:BB",
		"--timeout", "60", "--vmid", "@all", "status", "--label", "@daily", "--", "@conn"}
	if !slices.Equal(got, want) {
		t.Errorf("expanded\n%q\nwant\n%q", got, want)
	}

	// A command that takes arguments keeps an @ token that names no file: a guest
	// selection such as @tag-db; a file of that name is read.
	writeArgFile(t, dir, "opts", "--metadata\n")
	got, err = expandArgs(root, []string{"snapshot", "delete", "@tag-db", "@pool-x", "@opts"}, io.Discard)
	if want := []string{"snapshot", "delete", "@tag-db", "@pool-x", "--metadata"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("snapshot delete: %q, %v; want %q", got, err, want)
	}

	writeArgFile(t, dir, "loop", "--debug\n@loop2\n")
	writeArgFile(t, dir, "loop2", "@loop\n")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"@missing", "status"}, "response file missing not found"},
		{[]string{"status", "@missing"}, "response file missing not found"},
		{[]string{"snapshot", "@missing"}, "response file missing not found"},
		{[]string{"@loop"}, "response file loop includes itself"},
		{[]string{"@" + dir}, "response file " + dir + ": "},
	} {
		if _, err := expandArgs(root, c.args, io.Discard); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("expandArgs(%q) = %v, want %q", c.args, err, c.want)
		}
	}
}

// An @file holding the connection options (as cv4pve's maintainer recommends for
// credentials) works before and after the command, and its secrets never appear in
// the error of a file that is missing.
func TestPVEArgFile(t *testing.T) {
	e := newPVE(t)
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 100, Name: "web1", Kind: "qemu", Status: "running"})
	dir := t.TempDir()
	creds := writeArgFile(t, dir, "creds.rsp", "# cv4pve-autosnap response file\n--host\n"+e.hosts()+"\n--api-token="+pveTokenID+"="+pveSecret+
		"\n--fingerprint\n"+e.c.Fingerprint()+"\n--timestamp-format "+fmtMS+"\n")
	job := writeArgFile(t, dir, "job.rsp", "@"+creds+"\n--vmid 100\n")
	for _, args := range [][]string{
		{"@" + creds, "--vmid", "100", "snap", "--label", "rsp", "--keep", "3"},
		{"--vmid", "100", "snap", "@" + creds, "--label", "rsp", "--keep", "3"},
		{"@" + job, "snap", "--label", "rsp", "--keep", "3"},
	} {
		mustRun(t, args...)
	}
	if n := len(e.snapNames(100)); n != 3 {
		t.Errorf("%d snapshots after three runs, want 3", n)
	}
	// A credentials file others may read works, with a warning; a 0600 one without.
	if r := mustRun(t, "@"+creds, "--vmid", "100", "status"); strings.Contains(r.stderr, "WARNING: response file") {
		t.Errorf("0600 response file warned about: %s", r.stderr)
	}
	if err := os.Chmod(creds, 0o644); err != nil {
		t.Fatal(err)
	}
	r0 := mustRun(t, "@"+job, "status")
	if want := "WARNING: response file " + creds + " holds credentials and other users may read it (mode 0644): chmod 600 " + creds; !strings.Contains(r0.stderr, want) || strings.Contains(r0.stderr, pveSecret) {
		t.Errorf("readable credentials file: stderr %q, want %q and no secret", r0.stderr, want)
	}
	r := run(t, "@"+filepath.Join(dir, "nope.rsp"), "--vmid", "100", "status")
	if r.code != ExitUsage || !strings.Contains(r.stderr, "nope.rsp not found") {
		t.Errorf("missing @file: exit %d, stderr %q", r.code, r.stderr)
	}
	bad := writeArgFile(t, dir, "bad.rsp", "--api-token "+pveTokenID+"="+pveSecret+"\n@"+filepath.Join(dir, "gone")+"\n")
	r = run(t, "@"+bad, "--vmid", "100", "status")
	if r.code != ExitUsage || strings.Contains(r.stderr, pveSecret) {
		t.Errorf("nested missing @file: exit %d, stderr %q (must not show the secret)", r.code, r.stderr)
	}
}
