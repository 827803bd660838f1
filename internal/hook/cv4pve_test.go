package hook

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

// In cv4pve mode a hook runs as `/bin/bash -c PATH`: a script without #! gets bash
// (BASH_VERSION set, [[ ]] works), "Script return code: N" comes before the captured
// stdout, and stderr goes to Stderr, not into the output.
func TestRunCV4PVE(t *testing.T) {
	dir := t.TempDir()
	p := writeScript(t, dir, "it's a hook", `if [[ -n "$BASH_VERSION" ]]; then echo "shell=bash phase=$CV4PVE_AUTOSNAP_PHASE"; else echo shell=other; fi
echo "to stderr" >&2
echo "last line"
exit 3
`)
	var out, errOut bytes.Buffer
	r := &Runner{Path: p, CV4PVE: true, Stderr: &errOut}
	err := r.Run(context.Background(), Env{Phase: SnapCreatePost, VMID: "100"}, &out)
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 3 {
		t.Errorf("error %v, want ExitError 3", err)
	}
	if want := "Script return code: 3\nshell=bash phase=snap-create-post\nlast line\n"; out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
	if errOut.String() != "to stderr\n" {
		t.Errorf("stderr %q, want %q", errOut.String(), "to stderr\n")
	}

	// Success with whitespace only: nothing printed, as cv4pve (IsNullOrWhiteSpace).
	q := writeScript(t, dir, "quiet", "#!/bin/sh\necho '   '\necho\n")
	out.Reset()
	if err := (&Runner{Path: q, CV4PVE: true}).Run(context.Background(), Env{Phase: SnapJobStart}, &out); err != nil || out.Len() != 0 {
		t.Errorf("whitespace-only hook: %v, output %q", err, out.String())
	}

	// A name without '/' is the file in the working directory, not one in $PATH.
	writeScript(t, dir, "rel", "echo rel ok\n")
	t.Chdir(dir)
	out.Reset()
	if err := (&Runner{Path: "rel", CV4PVE: true}).Run(context.Background(), Env{Phase: SnapJobStart}, &out); err != nil || out.String() != "rel ok\n" {
		t.Errorf("relative hook: %v, output %q", err, out.String())
	}
}

// The same script in native mode still runs under /bin/sh with stderr in the output.
func TestRunCV4PVENativeUnchanged(t *testing.T) {
	p := writeScript(t, t.TempDir(), "h", "echo \"bash=${BASH_VERSION:+yes}\"\necho err >&2\n")
	var out bytes.Buffer
	if err := (&Runner{Path: p}).Run(context.Background(), Env{Phase: SnapJobStart}, &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != "bash=\nerr\n" {
		t.Errorf("native output %q", out.String())
	}
}

// Skip: the phases the caller runs itself are not run by Run.
func TestRunSkip(t *testing.T) {
	p := writeScript(t, t.TempDir(), "h", "#!/bin/sh\necho \"$CV4PVE_AUTOSNAP_PHASE\"\n")
	r := &Runner{Path: p, Skip: []Phase{SnapJobStart, CleanJobStart}}
	var out bytes.Buffer
	for _, ph := range []Phase{SnapJobStart, CleanJobStart, SnapJobEnd} {
		if err := r.Run(context.Background(), Env{Phase: ph}, &out); err != nil {
			t.Fatal(err)
		}
	}
	if out.String() != "snap-job-end\n" {
		t.Errorf("output %q, want only snap-job-end", out.String())
	}
}

// Frame surrounds a cv4pve-mode hook's output, in one write; a hook that prints
// nothing gets no frame.
func TestRunCV4PVEFrame(t *testing.T) {
	dir := t.TempDir()
	p := writeScript(t, dir, "h", "#!/bin/sh\necho out\nexit 2\n")
	var out bytes.Buffer
	r := &Runner{Path: p, CV4PVE: true, Frame: [2]string{"<begin>\n", "<end>\n"}}
	_ = r.Run(context.Background(), Env{Phase: SnapCreatePre}, &out)
	if want := "<begin>\nScript return code: 2\nout\n<end>\n"; out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
	out.Reset()
	q := writeScript(t, dir, "q", "#!/bin/sh\nexit 0\n")
	if err := (&Runner{Path: q, CV4PVE: true, Frame: r.Frame}).Run(context.Background(), Env{Phase: SnapCreatePre}, &out); err != nil || out.Len() != 0 {
		t.Errorf("silent hook: %v, output %q", err, out.String())
	}
}
