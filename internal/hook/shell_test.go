package hook

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
)

// A script without a #! line runs under /bin/sh, as a shell runs it: with its path
// as $0, the hook variables in its environment and its exit status reported.
func TestRunScriptWithoutShebang(t *testing.T) {
	dir := t.TempDir()
	p := writeScript(t, dir, "plain hook", "echo \"phase=$CV4PVE_AUTOSNAP_PHASE vm=$AUTOSNAP_VMID\"\necho \"zero=$0\"\n[ \"$CV4PVE_AUTOSNAP_PHASE\" = snap-create-abort ] && exit 4\nexit 0\n")
	var out bytes.Buffer
	if err := (&Runner{Path: p}).Run(context.Background(), Env{Phase: SnapCreatePre, VMID: "101"}, &out); err != nil {
		t.Fatalf("hook without #!: %v\n%s", err, out.String())
	}
	if want := "phase=snap-create-pre vm=101\nzero=" + p + "\n"; out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
	out.Reset()
	err := (&Runner{Path: p}).Run(context.Background(), Env{Phase: SnapCreateAbort}, &out)
	if ee, ok := err.(*ExitError); !ok || ee.Code != 4 {
		t.Errorf("exit status: %v, want ExitError 4", err)
	}
}

// A relative path without '/' is still the file in the working directory, also
// through the /bin/sh fallback.
func TestRunScriptWithoutShebangRelative(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, dir, "hook", "echo relative ok\n")
	t.Chdir(dir)
	var out bytes.Buffer
	if err := (&Runner{Path: "hook"}).Run(context.Background(), Env{Phase: SnapJobStart}, &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != "relative ok\n" {
		t.Errorf("output %q", out.String())
	}
}

// A binary the kernel cannot run is not handed to /bin/sh (bash refuses it the same
// way): the hook fails with a clear error.
func TestRunBinaryNotHandedToShell(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{"elf": "\x7fELF garbage\n", "nul": "echo hi\x00\x01\x02\n"} {
		p := writeScript(t, dir, name, body)
		var out bytes.Buffer
		err := (&Runner{Path: p}).Run(context.Background(), Env{Phase: CleanJobStart}, &out)
		if err == nil || !strings.Contains(err.Error(), "cannot execute binary file") {
			t.Errorf("%s: error %v, output %q", filepath.Base(p), err, out.String())
		}
		if out.Len() != 0 {
			t.Errorf("%s: output %q", name, out.String())
		}
	}
}

// The interpreter of a script without #! is /bin/sh itself (on Debian dash), not
// bash and not autosnap's own shell: the process running the script is /bin/sh's
// executable.
func TestRunScriptWithoutShebangUsesBinSh(t *testing.T) {
	want, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	p := writeScript(t, t.TempDir(), "which", "readlink /proc/$$/exe\n")
	var out bytes.Buffer
	if err := (&Runner{Path: p}).Run(context.Background(), Env{Phase: SnapJobStart}, &out); err != nil {
		t.Fatal(err)
	}
	got, err := filepath.EvalSymlinks(strings.TrimSpace(out.String()))
	if err != nil || got != want {
		t.Errorf("script without #! ran under %q (%v), want /bin/sh = %s", out.String(), err, want)
	}
}
