package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestGFSFlagsRefused: the calendar rules and --keep exclude each other, one of them
// is needed, rules that keep nothing and cv4pve mode are refused — all as usage
// errors before any connection.
func TestGFSFlagsRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cv4pve bool
		args   []string
		want   string
	}{
		{"snap neither", false, []string{"snap", "--label", "x"}, "give --keep N, or calendar rules"},
		{"clean neither", false, []string{"clean", "--label", "x"}, "give --keep N, or calendar rules"},
		{"snap both", false, []string{"snap", "--label", "x", "--keep", "3", "--keep-daily", "7"}, "exclude each other"},
		{"clean both", false, []string{"clean", "--label", "x", "--keep", "0", "--keep-within", "2d"}, "exclude each other"},
		{"snap zero", false, []string{"snap", "--label", "x", "--keep-daily", "0", "--keep-weekly", "0"}, "keeps nothing"},
		{"status zero", false, []string{"status", "--keep-last", "0"}, "keeps nothing"},
		{"bad count", false, []string{"snap", "--label", "x", "--keep-daily", "-3"}, "use a count of 0 or more, or unlimited"},
		{"bad span", false, []string{"clean", "--label", "x", "--keep-within", "3x"}, "unknown unit"},
		{"cv4pve snap", true, []string{"snap", "--label", "x", "--keep-daily", "7"}, "not in cv4pve mode"},
		{"cv4pve status", true, []string{"status", "--keep-daily", "7"}, "not in cv4pve mode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := execute(context.Background(), append([]string{"--host", "qemu:///nonexistent"}, tc.args...), &out, &errb, func(g *GlobalOptions) {
				if tc.cv4pve {
					g.compat.mode = compatCV4PVE
				}
			})
			want := ExitUsage
			if tc.cv4pve {
				want = 1 // cv4pve-autosnap's exit code for a bad command line
			}
			if code != want || !strings.Contains(errb.String(), tc.want) {
				t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", tc.args, code, errb.String(), want, tc.want)
			}
		})
	}
}
