package cli

// The engine's reproductions of issue 8 end to end, against the real libvirtd.

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/autosnap/autosnap/internal/testbed"
)

func TestSnapCoreRepros(t *testing.T) {
	bed := testbed.Libvirt(t)
	d := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 8})
	snapF := func(format, label string, keep int, extra ...string) result {
		t.Helper()
		args := append([]string{"--vmid", d.Name, "--timestamp-format", format, "snap", "--label", label, "--keep", itoa(keep)}, extra...)
		return run(t, args...)
	}

	// Repro 6: a failing snap-create-pre hook stops the snapshot with --strict-hooks.
	t.Run("StrictHooks", func(t *testing.T) {
		dir := t.TempDir()
		script, _ := hookScript(t, dir, `[ "$AUTOSNAP_PHASE" = snap-create-pre ] && exit 3`)
		before := len(d.Chain(t, "vda"))
		r := snapF(fmtMS, "strict", 1, "--script", script, "--strict-hooks")
		if r.code != ExitFailure || !strings.Contains(r.stdout, "exited with status 3; with --strict-hooks the snapshot is not taken") {
			t.Errorf("--strict-hooks: exit %d", r.code)
		}
		if rows := status(t, d.Name, "strict"); len(rows) != 0 || len(d.Chain(t, "vda")) != before {
			t.Errorf("a snapshot was taken: %+v", rows)
		}
		r = snapF(fmtMS, "strict", 1, "--script", script)
		if r.code != 0 || !strings.Contains(r.stdout, "WARNING: hook script") || len(status(t, d.Name, "strict")) != 1 {
			t.Errorf("without --strict-hooks: exit %d, the snapshot must be taken with a warning", r.code)
		}
		mustRun(t, "--vmid", d.Name, "--timestamp-format", fmtMS, "clean", "--label", "strict", "--keep", "0")
	})

	// Repro 7: another --timestamp-format, and a literal in the format.
	t.Run("OtherFormats", func(t *testing.T) {
		mustRun(t, "--vmid", d.Name, "--timestamp-format", "yyyyMMdd-HHmmssfff", "snap", "--label", "fmt", "--keep", "5")
		mustRun(t, "--vmid", d.Name, "--timestamp-format", "'tflit'yyMMddHHmmssfff", "snap", "--label", "fmt", "--keep", "5")
		rows := status(t, d.Name, "") // status runs with fmtMS
		n := 0
		for _, row := range rows {
			if strings.HasPrefix(row.Name, "autofmt") {
				n++
				if row.Label != "fmt" {
					t.Errorf("%s: label %q, want fmt", row.Name, row.Label)
				}
			}
		}
		if n != 2 {
			t.Errorf("status shows %d of the 2 snapshots taken with other formats: %+v", n, rows)
		}
		r := mustRun(t, "--vmid", d.Name, "--timestamp-format", fmtMS, "clean", "--label", "fmt", "--keep", "0")
		if strings.Count(r.stdout, "Remove snapshot: autofmt") != 2 || len(status(t, d.Name, "fmt")) != 0 {
			t.Errorf("clean did not remove both:\n%s", r.stdout)
		}
	})

	// Repro 8: two runs within one timestamp unit.
	t.Run("NameCollision", func(t *testing.T) {
		mustRun(t, "--vmid", d.Name, "--timestamp-format", "yyyyMMdd", "snap", "--label", "coll", "--keep", "3")
		chain := d.Chain(t, "vda")
		r := run(t, "--vmid", d.Name, "--timestamp-format", "yyyyMMdd", "snap", "--label", "coll", "--keep", "3")
		if r.code != ExitFailure || !strings.Contains(r.stdout, "already exists on guest "+d.Name+" (two runs within one timestamp unit? use a finer --timestamp-format)") {
			t.Errorf("second run in one day: exit %d", r.code)
		}
		if got := d.Chain(t, "vda"); strings.Join(got, " ") != strings.Join(chain, " ") {
			t.Errorf("the chain changed: %v → %v", chain, got)
		}
		mustRun(t, "--vmid", d.Name, "--timestamp-format", "yyyyMMdd", "clean", "--label", "coll", "--keep", "0")
	})

	// Repro 10 and retention reasons: --max-chain-depth after retention; the dry run
	// lists what it keeps and why.
	t.Run("ChainDepthAndKeepReasons", func(t *testing.T) {
		for range 2 {
			mustRun(t, "--vmid", d.Name, "--timestamp-format", fmtMS, "snap", "--label", "cd", "--keep", "2")
		}
		rows := status(t, d.Name, "cd")
		r := run(t, "--dry-run", "--vmid", d.Name, "--timestamp-format", fmtMS, "snap", "--label", "cd", "--keep", "1", "--max-chain-depth", "1")
		if r.code != 0 || !strings.Contains(r.stdout, "Remove snapshot: "+rows[0].Name+" (beyond keep 1)") || !strings.Contains(r.stdout, "(created now; newest 1 of 1)") {
			t.Errorf("dry run: exit %d", r.code)
		}
		r = run(t, "--vmid", d.Name, "--timestamp-format", fmtMS, "snap", "--label", "cd", "--keep", "1", "--max-chain-depth", "1")
		if r.code != 0 {
			t.Errorf("--keep 1 --max-chain-depth 1 on a guest with 2 snapshots: exit %d", r.code)
		}
		if got := len(d.Chain(t, "vda")); got != 2 {
			t.Errorf("chain has %d images, want base + 1", got)
		}
		mustRun(t, "--vmid", d.Name, "--timestamp-format", fmtMS, "clean", "--label", "cd", "--keep", "0")
	})

	// Hook output without a final newline.
	t.Run("HookOutputNewline", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "hook.sh")
		if err := os.WriteFile(p, []byte("#!/bin/sh\nprintf 'no-newline-%s' \"$AUTOSNAP_PHASE\"\n"), 0o700); err != nil {
			t.Fatal(err)
		}
		r := mustRun(t, "--vmid", d.Name, "--timestamp-format", fmtMS, "clean", "--label", "none", "--keep", "0", "--script", p)
		if !strings.Contains(r.stdout, "no-newline-clean-job-start\n") {
			t.Errorf("hook output runs into the next line:\n%s", r.stdout)
		}
	})
}

func itoa(i int) string {
	const digits = "0123456789"
	if i < 10 {
		return digits[i : i+1]
	}
	return itoa(i/10) + digits[i%10:i%10+1]
}
