package cli

// End-to-end backups of standalone QEMU guests over QMP (--host qmp:///DIR): every
// point restores bit-identical to the guest's disks at its instant, a backup killed
// while its job copies is cleaned out of QEMU by the next run, bitmaps survive QEMU
// stopped and started again, and lost or inconsistent ones make auto take a full and
// an explicit inc fail with the reason.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "github.com/autosnap/autosnap/internal/driver/qmp"
	"github.com/autosnap/autosnap/internal/testbed"
)

func qmpBackup(t *testing.T, h *testbed.QMPHost, q *testbed.QEMU, dir string, extra ...string) (bkRow, result) {
	t.Helper()
	args := append([]string{"-o", "json", "--vmid", q.Name, "backup", "--target", dir, "--quiesce", "off"}, extra...)
	r := qmpRun(t, h, args...)
	if r.code != 0 {
		return bkRow{}, r
	}
	var rows []struct {
		Point       string `json:"point"`
		Level       string `json:"level"`
		FullReason  string `json:"full_reason"`
		Consistency string `json:"consistency"`
		Outcome     string `json:"outcome"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || len(rows) != 1 {
		t.Fatalf("backup report: %v\n%s", err, r.stdout)
	}
	return bkRow{rows[0].Point, rows[0].Level, rows[0].FullReason, rows[0].Consistency, rows[0].Outcome}, r
}

func mustQMPBackup(t *testing.T, h *testbed.QMPHost, q *testbed.QEMU, dir, level string, extra ...string) bkRow {
	t.Helper()
	row, r := qmpBackup(t, h, q, dir, extra...)
	if r.code != 0 || row.Outcome != "ok" {
		t.Fatalf("backup %v: exit %d, %+v\n%s", extra, r.code, row, r.stderr)
	}
	if level != "" && row.Level != level {
		t.Fatalf("backup %v: level %s (%s), want %s", extra, row.Level, row.FullReason, level)
	}
	return row
}

// qmpCapture sums every disk of q, keyed by the disk names the qmp driver uses.
func qmpCapture(t *testing.T, q *testbed.QEMU) map[string]string {
	t.Helper()
	sums := map[string]string{}
	for i, d := range q.Disks {
		sums["virtio-disk"+string(rune('0'+i))] = testbed.ImageSum(t, d.Path)
	}
	return sums
}

func qmpCheckRestore(t *testing.T, h *testbed.QMPHost, q *testbed.QEMU, dir, id string, want map[string]string) {
	t.Helper()
	to := filepath.Join(t.TempDir(), id)
	if r := qmpRun(t, h, "--vmid", q.Name, "restore", "--target", dir, "--until", id, "--to", to, "--format", "raw"); r.code != 0 {
		t.Fatalf("restore %s: exit %d", id, r.code)
	}
	for d, sum := range want {
		if got := testbed.ImageSum(t, filepath.Join(to, d+".raw")); got != sum {
			t.Errorf("point %s disk %s restored reads %s, the guest's disk read %s at that instant", id, d, got, sum)
		}
	}
}

// checkNoLeftovers fails when a backup's nodes, jobs, fleecing files or a drive other
// than the disk's own node are left in QEMU.
func checkNoLeftovers(t *testing.T, q *testbed.QEMU) {
	t.Helper()
	if s := q.QMP(t, `{"execute":"query-named-block-nodes","arguments":{"flat":true}}`); strings.Contains(s, "autosnap-bk") {
		t.Errorf("backup nodes left in QEMU: %s", s)
	}
	if s := q.QMP(t, `{"execute":"query-jobs"}`); strings.Contains(s, "autosnap-bk") {
		t.Errorf("backup jobs left in QEMU: %s", s)
	}
	var rep struct {
		Return []struct {
			Inserted struct {
				NodeName string `json:"node-name"`
			} `json:"inserted"`
		} `json:"return"`
	}
	if err := json.Unmarshal([]byte(q.QMP(t, `{"execute":"query-block"}`)), &rep); err != nil {
		t.Fatal(err)
	}
	for i, b := range rep.Return {
		if i < len(q.Disks) && b.Inserted.NodeName != q.Disks[i].Node {
			t.Errorf("disk %d's drive is node %q, want its own %s", i, b.Inserted.NodeName, q.Disks[i].Node)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(q.Dir, ".*autosnap-fleece*")); len(m) > 0 {
		t.Errorf("fleecing images left: %v", m)
	}
}

func pausedQMP(t *testing.T, q *testbed.QEMU, f func()) {
	t.Helper()
	q.QMP(t, `{"execute":"stop"}`)
	defer q.QMP(t, `{"execute":"cont"}`)
	f()
}

// TestQMPBackupRestore: full, inc, inc (with data that became zero) and copy of the
// real two-disk guest, whose writer keeps changing its file system on vda, each
// restore bit-identical to the disks at their instant; a quiesced inc taken while the
// guest runs and writes restores to a file system that needs no journal recovery.
func TestQMPBackupRestore(t *testing.T) {
	h := testbed.NewQMPHost(t)
	q := h.Add(t, testbed.QEMUSpec{Guest: true, Writer: true, Disks: 2, DiskMiB: 32})
	dir := filepath.Join(t.TempDir(), "repo")
	mib := int64(1 << 20)
	steps := []struct {
		name, level string
		write       func()
		args        []string
	}{
		{"full", "full", func() {}, nil},
		{"inc1", "inc", func() {
			q.WriteDisk(t, 1, 1*mib, 0xa1, 2<<20)
		}, nil},
		{"inc2", "inc", func() {
			q.WriteDisk(t, 1, 1*mib, 0x00, 1<<20)
			q.WriteDisk(t, 1, 10*mib, 0xb1, 1<<20)
		}, []string{"--level", "inc"}},
		{"copy", "copy", func() {
			q.WriteDisk(t, 1, 20*mib, 0xc1, 1<<20)
		}, []string{"--level", "copy"}},
	}
	ids := make([]string, len(steps))
	sums := make([]map[string]string, len(steps))
	for i, s := range steps {
		s.write()
		time.Sleep(time.Second) // the writer changes vda meanwhile
		pausedQMP(t, q, func() {
			row := mustQMPBackup(t, h, q, dir, s.level, s.args...)
			if i == 0 && !strings.Contains(row.FullReason, "no backup of this guest") {
				t.Errorf("the first full does not say why: %q", row.FullReason)
			}
			ids[i], sums[i] = row.Point, qmpCapture(t, q)
		})
		checkNoLeftovers(t, q)
	}
	for i, id := range ids {
		qmpCheckRestore(t, h, q, dir, id, sums[i])
	}
	if sums[0]["virtio-disk1"] == sums[2]["virtio-disk1"] || sums[0]["virtio-disk0"] == sums[2]["virtio-disk0"] {
		t.Fatal("the writes changed nothing: the test cannot tell points apart")
	}
	listed := func() []string {
		var rows []struct{ ID string }
		r := qmpRun(t, h, "-o", "json", "backup", "list", "--target", dir)
		if err := json.Unmarshal([]byte(r.stdout), &rows); r.code != 0 || err != nil {
			t.Fatalf("backup list: exit %d, %v", r.code, err)
		}
		var out []string
		for _, row := range rows {
			out = append(out, row.ID)
		}
		return out
	}
	if got := listed(); strings.Join(got, " ") != strings.Join(ids, " ") {
		t.Errorf("backup list: %v, want %v", got, ids)
	}
	if r := qmpRun(t, h, "backup", "verify", "--target", dir, "--read-data"); r.code != 0 {
		t.Errorf("backup verify --read-data: exit %d", r.code)
	}
	if r := qmpRun(t, h, "backup", "prune", "--target", dir, "--keep-last", "2"); r.code != 0 {
		t.Fatalf("backup prune: exit %d", r.code)
	}
	left := listed()
	if len(left) != 2 {
		t.Errorf("points after prune --keep-last 2: %v", left)
	}
	for i, id := range ids {
		for _, l := range left {
			if l == id {
				qmpCheckRestore(t, h, q, dir, id, sums[i])
			}
		}
	}

	row := mustQMPBackup(t, h, q, dir, "inc", "--quiesce", "on")
	if row.Consistency != "quiesced" {
		t.Errorf("a backup with --quiesce on of a guest with an agent: consistency %q", row.Consistency)
	}
	checkNoLeftovers(t, q)
	to := filepath.Join(t.TempDir(), "quiesced")
	if r := qmpRun(t, h, "--vmid", q.Name, "restore", "--target", dir, "--until", row.Point, "--to", to, "--format", "raw"); r.code != 0 {
		t.Fatalf("restore %s: exit %d", row.Point, r.code)
	}
	raw := filepath.Join(to, "virtio-disk0.raw")
	if out, err := exec.Command("dumpe2fs", "-h", raw).CombinedOutput(); err != nil || strings.Contains(string(out), "needs_recovery") {
		t.Errorf("the quiesced point's vda needs journal recovery (or dumpe2fs failed: %v)", err)
	}
	if err := testbed.FsckImage(t, raw); err != nil {
		t.Errorf("the quiesced point's vda: %v", err)
	}
}

// TestQMPBackupBitmapsAcrossRestart: checkpoints' bitmaps survive QEMU quit and
// started again with the same command line (the next auto backup is an inc); after
// QEMU was killed they are inconsistent, and after one was removed behind autosnap's
// back it is missing: then auto takes a full saying why, and an explicit inc fails
// with the reason.
func TestQMPBackupBitmapsAcrossRestart(t *testing.T) {
	h := testbed.NewQMPHost(t)
	q := h.Add(t, testbed.QEMUSpec{Disks: 1, DiskMiB: 32})
	argv := q.Argv(t)
	dir := filepath.Join(t.TempDir(), "repo")
	var ids []string
	var sums []map[string]string
	point := func(level string, args ...string) bkRow {
		row := mustQMPBackup(t, h, q, dir, level, args...)
		ids, sums = append(ids, row.Point), append(sums, qmpCapture(t, q))
		return row
	}
	point("full")
	q.WriteDisk(t, 0, 3<<20, 0x31, 1<<20)
	q.Stop(t)
	q.Restart(t, argv)
	point("inc")

	// QEMU marks the bitmaps it loaded in-use in the image; killed, it cannot clear
	// that. (A bitmap created since it started is not in the image at all: missing.)
	q.Stop(t)
	q.Restart(t, argv)
	q.WriteDisk(t, 0, 5<<20, 0x32, 1<<20)
	q.KillHard(t)
	q.Restart(t, argv)
	_, r := qmpBackup(t, h, q, dir, "--level", "inc")
	if r.code == 0 || !strings.Contains(r.stderr, "inconsistent") {
		t.Errorf("an explicit inc after QEMU was killed: exit %d, want a failure naming the inconsistent bitmap:\n%s", r.code, r.stderr)
	}
	if row := point("full"); !strings.Contains(row.FullReason, "inconsistent") {
		t.Errorf("auto after QEMU was killed took a full saying %q, want the inconsistent bitmap", row.FullReason)
	}
	checkNoLeftovers(t, q)

	q.WriteDisk(t, 0, 7<<20, 0x33, 1<<20)
	var bms []struct {
		Kind, Name string
	}
	r = qmpRun(t, h, "-o", "json", "bitmaps", "list", q.Name)
	if err := json.Unmarshal([]byte(r.stdout), &bms); err != nil {
		t.Fatalf("bitmaps list: %v\n%s", err, r.stdout)
	}
	for _, b := range bms {
		if b.Kind == "bitmap" {
			q.QMP(t, `{"execute":"block-dirty-bitmap-remove","arguments":{"node":"`+q.Disks[0].Node+`","name":"`+b.Name+`"}}`)
		}
	}
	_, r = qmpBackup(t, h, q, dir, "--level", "inc")
	if r.code == 0 || !strings.Contains(r.stderr, "missing") {
		t.Errorf("an explicit inc after the bitmap was removed: exit %d, want a failure naming the missing bitmap:\n%s", r.code, r.stderr)
	}
	if row := point("full"); !strings.Contains(row.FullReason, "missing") {
		t.Errorf("auto after the bitmap was removed took a full saying %q, want the missing bitmap", row.FullReason)
	}
	for i, id := range ids {
		qmpCheckRestore(t, h, q, dir, id, sums[i])
	}
}

// TestQMPBackupKilled: autosnap killed (SIGKILL) while its throttled job copies leaves
// the job, the fleecing nodes and the filter in QEMU; the next run removes them and
// continues, and every point restores to the guest's disks.
func TestQMPBackupKilled(t *testing.T) {
	bin := buildAutosnap(t)
	h := testbed.NewQMPHost(t)
	q := h.Add(t, testbed.QEMUSpec{Disks: 2, DiskMiB: 64})
	dir := filepath.Join(t.TempDir(), "repo")
	q.WriteDisk(t, 0, 0, 0x41, 48<<20)
	full := mustQMPBackup(t, h, q, dir, "full")
	want := qmpCapture(t, q)

	q.WriteDisk(t, 1, 8<<20, 0x42, 32<<20)
	cmd := exec.Command(bin, "--host", h.URI(), "--vmid", q.Name, "backup", "--target", dir, "--quiesce", "off")
	cmd.Env = append(os.Environ(), "AUTOSNAP_CRASH_AT=backup.copying", "AUTOSNAP_QMP_BACKUP_SPEED=1048576")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ProcessState.String() != "signal: killed" {
		t.Fatalf("the killed backup: %v\n%s", err, out)
	}
	if s := q.QMP(t, `{"execute":"query-jobs"}`); !strings.Contains(s, "autosnap-bk") || strings.Contains(s, "concluded") {
		t.Fatalf("no backup job in flight after the kill: %s", s)
	}
	if s := q.QMP(t, `{"execute":"query-named-block-nodes","arguments":{"flat":true}}`); !strings.Contains(s, "autosnap-bk0-c") {
		t.Fatalf("no fleecing filter left after the kill: the test does not test the repair")
	}
	// A snapshot is the next command to open the guest: it finds the disks, not the
	// fleecing filter.
	if r := qmpSnap(t, h, q.Name, "afterkill", 1, "--quiesce", "off"); r.code != 0 {
		t.Fatalf("snap after the killed backup: exit %d\n%s", r.code, r.stderr)
	}
	checkNoLeftovers(t, q)
	start := time.Now()
	row := mustQMPBackup(t, h, q, dir, "")
	t.Logf("after the kill: %s (%s) in %s", row.Level, row.FullReason, time.Since(start).Round(time.Millisecond))
	checkNoLeftovers(t, q)
	now := qmpCapture(t, q)
	qmpCheckRestore(t, h, q, dir, full.Point, want)
	qmpCheckRestore(t, h, q, dir, row.Point, now)
	row2 := mustQMPBackup(t, h, q, dir, "inc", "--level", "inc")
	qmpCheckRestore(t, h, q, dir, row2.Point, now)

	// Killed again, and QEMU quits (cleanly: the unfinished checkpoint's bitmap is
	// stored in the image) before the next run, which finds it stopped.
	argv := q.Argv(t)
	q.WriteDisk(t, 0, 0, 0x43, 32<<20)
	cmd = exec.Command(bin, "--host", h.URI(), "--vmid", q.Name, "backup", "--target", dir, "--quiesce", "off")
	cmd.Env = append(os.Environ(), "AUTOSNAP_CRASH_AT=backup.copying", "AUTOSNAP_QMP_BACKUP_SPEED=1048576")
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("the second killed backup finished:\n%s", out)
	}
	q.Stop(t)
	var bms []struct{ Kind, Name, Orphan string }
	r := qmpRun(t, h, "-o", "json", "bitmaps", "list", q.Name)
	if err := json.Unmarshal([]byte(r.stdout), &bms); err != nil {
		t.Fatalf("bitmaps list: %v\n%s", err, r.stdout)
	}
	for _, b := range bms {
		if b.Kind == "bitmap" && b.Orphan != "no" {
			t.Errorf("bitmap %s left by the killed backup in the stopped guest's image", b.Name)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(q.Dir, ".*autosnap-fleece*")); len(m) > 0 {
		t.Errorf("fleecing images left: %v", m)
	}
	q.Restart(t, argv)
	mustQMPBackup(t, h, q, dir, "inc", "--level", "inc")
	checkNoLeftovers(t, q)
}

// TestQMPBitmapsCleanupQMPBackup: bitmaps cleanup removes autosnap's checkpoints and
// leaves qmpbackup's bitmap alone unless --include-qmpbackup asks for it.
func TestQMPBitmapsCleanupQMPBackup(t *testing.T) {
	h := testbed.NewQMPHost(t)
	q := h.Add(t, testbed.QEMUSpec{Disks: 1, DiskMiB: 16})
	dir := filepath.Join(t.TempDir(), "repo")
	if r := qmpRun(t, h, "--dry-run", "--vmid", q.Name, "backup", "--target", dir); r.code != 0 || strings.Contains(q.QMP(t, `{"execute":"query-block"}`), `"autosnap-`) {
		t.Fatalf("backup --dry-run: exit %d, or it added a bitmap", r.code)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*", "*")); len(m) > 0 {
		t.Fatalf("backup --dry-run wrote %v", m)
	}
	mustQMPBackup(t, h, q, dir, "full")
	q.QMP(t, `{"execute":"block-dirty-bitmap-add","arguments":{"node":"`+q.Disks[0].Node+`","name":"qmpbackup-2b1f","persistent":true}}`)
	has := func(name string) bool {
		return strings.Contains(q.QMP(t, `{"execute":"query-block"}`), `"`+name+`"`)
	}
	if r := qmpRun(t, h, "bitmaps", "cleanup", q.Name); r.code != 0 {
		t.Fatalf("bitmaps cleanup: exit %d", r.code)
	}
	if strings.Contains(q.QMP(t, `{"execute":"query-block"}`), `"autosnap-`) || !has("qmpbackup-2b1f") {
		t.Fatalf("after bitmaps cleanup: %s, want no autosnap bitmap and qmpbackup's kept", q.QMP(t, `{"execute":"query-block"}`))
	}
	if r := qmpRun(t, h, "--dry-run", "bitmaps", "cleanup", "--include-qmpbackup", q.Name); r.code != 0 || !strings.Contains(r.stdout+r.stderr, "qmpbackup-2b1f") || !has("qmpbackup-2b1f") {
		t.Fatalf("dry run of --include-qmpbackup: exit %d, or removed the bitmap", r.code)
	}
	if r := qmpRun(t, h, "bitmaps", "cleanup", "--include-qmpbackup", q.Name); r.code != 0 {
		t.Fatalf("bitmaps cleanup --include-qmpbackup: exit %d", r.code)
	}
	if has("qmpbackup-2b1f") {
		t.Error("qmpbackup's bitmap is still there after --include-qmpbackup")
	}
	if row := mustQMPBackup(t, h, q, dir, "full"); !strings.Contains(row.FullReason, "gone") {
		t.Errorf("the backup after cleanup: full because %q", row.FullReason)
	}
}

// TestQMPBackupLegacyDrive: a guest started with -drive (QEMU names its nodes #blockNNN,
// and names them anew when it starts again) is backed up full and inc across a QEMU
// restart, each point restoring to the disk at its instant.
func TestQMPBackupLegacyDrive(t *testing.T) {
	h := testbed.NewQMPHost(t)
	work := t.TempDir()
	img := filepath.Join(work, "legacy.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	name := "ast-legacy-" + filepath.Base(work)
	sock := filepath.Join(work, "qmp.sock")
	pidfile := filepath.Join(work, "qemu.pid")
	argv := []string{"qemu-system-x86_64", "-name", name, "-accel", "tcg", "-machine", "pc", "-m", "64",
		"-nodefaults", "-no-user-config", "-display", "none", "-S",
		"-qmp", "unix:" + sock + ",server=on,wait=off",
		"-drive", "file=" + img + ",if=virtio,format=qcow2",
		"-daemonize", "-pidfile", pidfile}
	start := func() {
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("starting QEMU: %v: %s", err, out)
		}
	}
	pid := func() int {
		b, _ := os.ReadFile(pidfile)
		var p int
		fmt.Sscan(string(b), &p)
		return p
	}
	hmp := func(line string) {
		q := &testbed.QEMU{Name: name, QMPSocket: sock}
		b, _ := json.Marshal(map[string]any{"execute": "human-monitor-command", "arguments": map[string]any{"command-line": line}})
		if r := q.QMP(t, string(b)); !strings.Contains(r, `"return": ""`) {
			t.Fatalf("%s: %s", line, r)
		}
	}
	t.Cleanup(func() {
		if p := pid(); p > 0 {
			syscall.Kill(p, syscall.SIGKILL)
		}
	})
	start()
	if err := os.Symlink(sock, filepath.Join(h.Dir, name+".qmp")); err != nil {
		t.Fatal(err)
	}
	q := &testbed.QEMU{Name: name, QMPSocket: sock}
	if s := q.QMP(t, `{"execute":"query-block"}`); !strings.Contains(s, `"node-name": "#block`) {
		t.Fatalf("the -drive guest's node is not auto-named: %s", s)
	}
	sum := func() map[string]string { return map[string]string{"virtio0": testbed.ImageSum(t, img)} }
	dir := filepath.Join(t.TempDir(), "repo")
	hmp(`qemu-io virtio0 "write -P 0x51 1M 2M"`)
	full := mustQMPBackup(t, h, q, dir, "full")
	atFull := sum()
	hmp(`qemu-io virtio0 "write -P 0x52 5M 1M"`)
	inc := mustQMPBackup(t, h, q, dir, "inc")
	atInc := sum()

	p := pid()
	q.QMP(t, `{"execute":"quit"}`)
	for end := time.Now().Add(30 * time.Second); syscall.Kill(p, 0) == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("QEMU did not quit")
		}
	}
	start()
	hmp(`qemu-io virtio0 "write -P 0x53 9M 1M"`)
	inc2 := mustQMPBackup(t, h, q, dir, "inc")
	atInc2 := sum()
	checkNoLeftovers(t, &testbed.QEMU{Name: name, QMPSocket: sock, Dir: work})
	for id, want := range map[string]map[string]string{full.Point: atFull, inc.Point: atInc, inc2.Point: atInc2} {
		qmpCheckRestore(t, h, q, dir, id, want)
	}
}
