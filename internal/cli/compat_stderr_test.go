package cli

import (
	"strings"
	"testing"
)

// TestCV4PVEStderr: cv4pve-autosnap prints nothing on stderr for a failed guest, a
// --vmid token that matches nothing or a selection without guests (its NOT FOUND lines
// are on stdout), and its fatal "ERROR: message" goes to stdout; only command-line
// errors (System.CommandLine's) go to stderr. Native mode keeps its stderr summary.
func TestCV4PVEStderr(t *testing.T) {
	e := cvCluster(t)
	quiet := []struct {
		name string
		args []string
		code int
	}{
		{"snap, a guest failed and a token matches nothing", e.cvArgs("--vmid", "100,201,999", "snap", "--label", "hourly", "--keep", "5"), 1},
		{"clean, a token matches nothing", e.cvArgs("--vmid", "100,999", "clean", "--label", "hourly", "--keep", "5"), 0},
		{"status, a token matches nothing", e.cvArgs("--vmid", "100,999", "status"), 0},
		{"snap selecting nothing", e.cvArgs("--vmid", "999", "snap", "--label", "hourly", "--keep", "5"), 1},
		{"clean selecting nothing", e.cvArgs("--vmid", "999", "clean", "--label", "hourly", "--keep", "5"), 1},
	}
	for _, tc := range quiet {
		r := cvRun(t, CV4PVEName, nil, tc.args...)
		if r.code != tc.code || r.stderr != "" {
			t.Errorf("%s: exit %d, stderr %q; want exit %d and nothing on stderr", tc.name, r.code, r.stderr, tc.code)
		}
	}
	// Native mode is unchanged: the token warning and the summary are on stderr.
	r := cvRun(t, "autosnap", nil, quiet[0].args...)
	if !strings.Contains(r.stderr, `WARNING: --vmid token "999" matches no guest`) || !strings.Contains(r.stderr, "ERROR: ") {
		t.Errorf("native snap: stderr %q lacks the token warning or the ERROR summary", r.stderr)
	}

	// A fatal error: cv4pve prints "ERROR: message" on stdout.
	r = cvRun(t, CV4PVEName, nil, "--host", "127.0.0.1:1", "--api-token", pveTokenID+"="+pveSecret, "--vmid", "100", "status")
	if r.code != 1 || r.stderr != "" || !strings.HasPrefix(r.stdout, "ERROR: ") {
		t.Errorf("connection refused: exit %d, stdout %q, stderr %q; want exit 1 and ERROR: on stdout only", r.code, r.stdout, r.stderr)
	}
	// A command-line error stays on stderr, as System.CommandLine prints it.
	r = cvRun(t, CV4PVEName, nil, e.cvArgs("--vmid", "100", "snap", "--label", "x")...)
	if r.code != 1 || !strings.Contains(r.stderr, "keep") || r.stdout != "" {
		t.Errorf("snap without --keep: exit %d, stdout %q, stderr %q; want exit 1 and the error on stderr", r.code, r.stdout, r.stderr)
	}
}
