package cli

import (
	"regexp"
	"testing"

	"github.com/autosnap/autosnap/internal/pveemu"
)

// A .NET custom format with a bare letter literal (T), as cv4pve-autosnap users write
// it, names snapshots as .NET does, and retention and status recognise them.
func TestPVETimestampFormatLetterLiteral(t *testing.T) {
	e := newPVE(t)
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 100, Name: "web1", Kind: "qemu", Status: "running"})
	const format = "yyyyMMddTHHmmssfff"
	for range 3 {
		if r := e.run(t, "--timestamp-format", format, "--vmid", "100", "snap", "--label", "hourly", "--keep", "2"); r.code != 0 {
			t.Fatalf("snap with --timestamp-format %s: exit %d\n%s", format, r.code, r.stderr)
		}
	}
	names := e.snapNames(100)
	if len(names) != 2 {
		t.Fatalf("snapshots %v, want 2 (--keep 2)", names)
	}
	re := regexp.MustCompile(`^autohourly20\d{6}T\d{9}$`)
	for _, n := range names {
		if !re.MatchString(n) {
			t.Errorf("name %q is not auto+hourly+%s", n, format)
		}
	}
	rows := e.status(t, "100", "hourly")
	if len(rows) != 2 {
		t.Errorf("status --label hourly lists %d snapshots, want 2", len(rows))
	}
	if r := e.run(t, "--timestamp-format", format, "--vmid", "100", "clean", "--label", "hourly", "--keep", "0"); r.code != 0 || len(e.snapNames(100)) != 0 {
		t.Errorf("clean: exit %d, left %v", r.code, e.snapNames(100))
	}
}
