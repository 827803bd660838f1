package qmp_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/autosnap/autosnap/internal/driver"
	qmpdrv "github.com/autosnap/autosnap/internal/driver/qmp"
	"github.com/autosnap/autosnap/internal/testbed"
)

// TestResumeStoppedOnlyWhatAutosnapStopped: ResumeStopped (the watchdog's resume
// action) runs the CPUs again only when the journal says a backup of autosnap's
// stopped a running guest and QEMU still reports it paused; a guest someone else
// paused, one never started (-S, prelaunch) and a running one are left as they are.
func TestResumeStoppedOnlyWhatAutosnapStopped(t *testing.T) {
	h := testbed.NewQMPHost(t)
	q := h.Add(t, testbed.QEMUSpec{Disks: 1, DiskMiB: 16})
	d := openHost(t, h.URI()).(*qmpdrv.Driver)
	g := driver.Guest{Node: h.Dir, Name: q.Name}
	journal := filepath.Join(h.Dir, q.Name+".autosnap-backup.json")
	stopped := func() {
		t.Helper()
		b := `{"version":1,"pending":{"started":"2026-11-30T10:00:00Z","stopped":true,"disks":[]}}`
		if err := os.WriteFile(journal, []byte(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	resume := func() {
		t.Helper()
		if err := d.ResumeStopped(context.Background(), g); err != nil {
			t.Fatalf("ResumeStopped: %v", err)
		}
	}

	stopped()
	resume()
	if st := q.Status(t); st != "prelaunch" {
		t.Errorf("a QEMU started with -S is %s after ResumeStopped, want prelaunch", st)
	}

	q.QMP(t, `{"execute":"cont"}`)
	q.QMP(t, `{"execute":"stop"}`) // someone else paused it; no backup journalled
	resume()
	if st := q.Status(t); st != "paused" {
		t.Errorf("a guest paused by someone else is %s after ResumeStopped, want paused", st)
	}

	stopped() // a backup of autosnap's stopped it and its run died
	resume()
	if st := q.Status(t); st != "running" {
		t.Errorf("a guest a backup stopped is %s after ResumeStopped, want running", st)
	}
	if b, err := os.ReadFile(journal); err != nil || len(b) == 0 {
		t.Fatalf("journal: %v", err)
	} else if strings.Contains(string(b), `"pending"`) {
		t.Errorf("the interrupted backup is still journalled after the repair: %s", b)
	}

	stopped()
	resume()
	if st := q.Status(t); st != "running" {
		t.Errorf("a running guest is %s after ResumeStopped", st)
	}
}
