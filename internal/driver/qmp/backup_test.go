package qmp_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	qmpdrv "github.com/autosnap/autosnap/internal/driver/qmp"
	"github.com/autosnap/autosnap/internal/testbed"
)

// TestBackupStoppedLeavesNothing: a full whose (throttled) job is still copying when
// the caller's context ends fails, and leaves no job, no fleecing node or file, the
// drive on the disk's own node, and no checkpoint or bitmap of the one it was to
// create; a full afterwards succeeds.
func TestBackupStoppedLeavesNothing(t *testing.T) {
	h := testbed.NewQMPHost(t)
	q := h.Add(t, testbed.QEMUSpec{Disks: 2, DiskMiB: 32})
	q.QMP(t, `{"execute":"cont"}`)
	q.WriteDisk(t, 0, 0, 0x61, 24<<20)
	d := openHost(t, h.URI())
	b := d.(driver.Backupper)
	g := driver.Guest{Node: h.Dir, Name: q.Name}
	src, err := b.BackupSource(context.Background(), g)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	req := func(tag string) driver.BackupRequest {
		r := driver.BackupRequest{Level: driver.LevelFull, Checkpoint: "autosnap-t-" + tag}
		for _, dk := range src.Disks {
			r.Targets = append(r.Targets, driver.BackupTarget{Disk: dk.Name, File: filepath.Join(dir, tag+"-"+dk.Name+".qcow2")})
		}
		return r
	}
	t.Setenv(qmpdrv.SpeedEnv, "1048576")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var progressed bool
	r := req("stopped")
	r.Progress = func(done, total uint64) { progressed = progressed || done > 0 }
	if _, err := b.Backup(ctx, g, r); err == nil {
		t.Fatal("a backup of 24 MiB at 1 MiB/s finished within 2 s")
	}
	if !progressed {
		t.Error("the job reported no progress before it was stopped")
	}
	for _, cmd := range []string{`{"execute":"query-jobs"}`, `{"execute":"query-named-block-nodes","arguments":{"flat":true}}`, `{"execute":"query-block"}`} {
		if s := q.QMP(t, cmd); strings.Contains(s, "autosnap-bk") || strings.Contains(s, "autosnap-t-stopped") {
			t.Errorf("%s after the stopped backup: %s", cmd, s)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(q.Dir, ".*autosnap-fleece*")); len(m) > 0 {
		t.Errorf("fleecing images left: %v", m)
	}
	if src, err := b.BackupSource(context.Background(), g); err != nil || len(src.Checkpoints) != 0 {
		t.Errorf("checkpoints after the stopped backup: %+v, %v", src.Checkpoints, err)
	}
	t.Setenv(qmpdrv.SpeedEnv, "")
	if _, err := b.Backup(context.Background(), g, req("after")); err != nil {
		t.Fatalf("a full after the stopped one: %v", err)
	}
}
