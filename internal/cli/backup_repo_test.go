package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/repo"
)

// repoFixture builds a repository with two guests: web (full, inc, inc, diff) and db
// (full, copy), each disk written with known patterns through qemu-io.
type repoFixture struct {
	dir    string
	web    *repo.Guest
	db     *repo.Guest
	points map[string][]repo.Point
}

func qemu(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func addPoint(t *testing.T, g *repo.Guest, level, parent string, at time.Time, pat byte) repo.Point {
	t.Helper()
	ctx := context.Background()
	unlock, err := g.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	p, err := g.Begin(repo.Manifest{Level: level, Parent: parent, Started: at, Disks: []repo.DiskManifest{{Name: "vda", VirtualSize: 8 << 20}}})
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"create", "-q", "-f", "qcow2"}
	if b := p.Backing("vda"); b != "" {
		args = append(args, "-b", b, "-F", "qcow2")
	}
	qemu(t, "qemu-img", append(args, p.File("vda"), "8M")...)
	qemu(t, "qemu-io", "-c", fmt.Sprintf("write -P 0x%02x %d 65536", pat, int(pat)*65536), p.File("vda"))
	pt, err := p.Commit(ctx, repo.Manifest{Consistency: "quiesced", Config: []byte("<domain/>")})
	if err != nil {
		t.Fatal(err)
	}
	return pt
}

func newRepoFixture(t *testing.T) *repoFixture {
	t.Helper()
	f := &repoFixture{dir: filepath.Join(t.TempDir(), "repo"), points: map[string][]repo.Point{}}
	r, err := repo.Open(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	if f.web, err = r.Guest(repo.GuestID{UUID: "aaaaaaaa-1111-2222-3333-444444444444", Name: "web", Node: "h1", Driver: "libvirt"}); err != nil {
		t.Fatal(err)
	}
	if f.db, err = r.Guest(repo.GuestID{UUID: "bbbbbbbb-1111-2222-3333-444444444444", Name: "db", Node: "h1", Driver: "libvirt"}); err != nil {
		t.Fatal(err)
	}
	base := time.Now().Add(-72 * time.Hour).Truncate(time.Hour)
	full := addPoint(t, f.web, "full", "", base, 1)
	inc1 := addPoint(t, f.web, "inc", full.ID, base.Add(24*time.Hour), 2)
	inc2 := addPoint(t, f.web, "inc", inc1.ID, base.Add(48*time.Hour), 3)
	diff := addPoint(t, f.web, "diff", full.ID, base.Add(49*time.Hour), 4)
	f.points["web"] = []repo.Point{full, inc1, inc2, diff}
	dfull := addPoint(t, f.db, "full", "", base, 5)
	dcopy := addPoint(t, f.db, "copy", "", base.Add(time.Hour), 6)
	f.points["db"] = []repo.Point{dfull, dcopy}
	return f
}

// restoreBytes restores vda of point p as raw and returns the bytes.
func restoreBytes(t *testing.T, g *repo.Guest, p repo.Point) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "r.raw")
	if err := g.RestoreDisk(context.Background(), p, "vda", out, "raw"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBackupListCommand(t *testing.T) {
	f := newRepoFixture(t)
	r := mustRun(t, "-o", "json", "backup", "list", "--target", f.dir)
	var rows []struct {
		Guest, UUID, ID, Level, Chain, Parent, Consistency, Dir string
		Time                                                    time.Time
		Size                                                    uint64
		VirtualSize                                             uint64 `json:"virtual_size"`
		Disks                                                   []string
	}
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("%v: %s", err, r.stdout)
	}
	if len(rows) != 6 {
		t.Fatalf("%d rows, want 6: %s", len(rows), r.stdout)
	}
	want := append(append([]repo.Point{}, f.points["db"]...), f.points["web"]...)
	for i, p := range want {
		got := rows[i]
		if got.ID != p.ID || got.Level != p.Level || got.Chain != p.Chain || got.Parent != p.Parent || !got.Time.Equal(p.Started) ||
			got.VirtualSize != 8<<20 || got.Consistency != "quiesced" || len(got.Disks) != 1 || got.Dir != p.Dir {
			t.Errorf("row %d: %+v, want point %+v", i, got, p.Manifest)
		}
	}
	// Size on disk is a number in JSON; the text table shows it readable.
	var raw []map[string]any
	_ = json.Unmarshal([]byte(r.stdout), &raw)
	if _, ok := raw[0]["size"].(float64); !ok {
		t.Errorf("size is %T in JSON", raw[0]["size"])
	}
	r = mustRun(t, "--vmid", "web", "backup", "list", "--target", f.dir)
	if strings.Contains(r.stdout, "| db ") || strings.Count(r.stdout, "| web ") != 4 || !strings.Contains(r.stdout, "KiB") {
		t.Errorf("--vmid web lists:\n%s", r.stdout)
	}
	r = mustRun(t, "--vmid", "bbbbbbbb-1111-2222-3333-444444444444", "-o", "json", "backup", "list", "--target", f.dir)
	if strings.Contains(r.stdout, `"web"`) || strings.Count(r.stdout, `"db"`) != 2 {
		t.Errorf("--vmid UUID lists:\n%s", r.stdout)
	}
	r = run(t, "--vmid", "web,nosuch", "backup", "list", "--target", f.dir)
	if r.code != ExitFailure || !strings.Contains(r.stderr, "nosuch") {
		t.Errorf("unmatched token: exit %d %s", r.code, r.stderr)
	}
	if r := run(t, "backup", "list", "--target", t.TempDir()); r.code != ExitFailure || !strings.Contains(r.stderr, "autosnap-repo.json") {
		t.Errorf("list of a non-repository: exit %d %s", r.code, r.stderr)
	}
	if r := run(t, "backup", "list"); r.code != ExitUsage {
		t.Errorf("list without --target: exit %d", r.code)
	}
}

// TestBackupVerifyCommand: a clean repository verifies (exit 0, also with
// --read-data); one flipped byte in an inc gives exit 1 and the file's name.
func TestBackupVerifyCommand(t *testing.T) {
	f := newRepoFixture(t)
	mustRun(t, "backup", "verify", "--target", f.dir, "--read-data")
	inc := f.points["web"][1]
	file := filepath.Join(inc.Dir, "vda.qcow2")
	var m []struct {
		Depth  int   `json:"depth"`
		Data   bool  `json:"data"`
		Offset int64 `json:"offset"`
	}
	out, err := exec.Command("qemu-img", "map", "--output=json", file).Output()
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	var off int64 = -1
	for _, e := range m {
		if e.Depth == 0 && e.Data {
			off = e.Offset
			break
		}
	}
	if off < 0 {
		t.Fatalf("no data in %s", file)
	}
	fh, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fh.WriteAt([]byte{0xff}, off+123); err != nil {
		t.Fatal(err)
	}
	fh.Close()
	r := run(t, "backup", "verify", "--target", f.dir)
	if r.code != ExitFailure || !strings.Contains(r.stdout, "FAULT "+file+": checksum mismatch") || !strings.Contains(r.stderr, file) {
		t.Errorf("verify of a flipped byte: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	// The other guest alone is intact.
	mustRun(t, "--vmid", "db", "backup", "verify", "--target", f.dir)
	r = run(t, "-o", "json", "backup", "verify", "--target", f.dir)
	var faults []map[string]string
	if err := json.Unmarshal([]byte(r.stdout), &faults); err != nil || len(faults) != 1 || faults[0]["file"] != file || faults[0]["point"] != inc.ID {
		t.Errorf("json faults %v (%v): %s", faults, err, r.stdout)
	}
}

// TestBackupPruneCommand: --dry-run prints reasons and changes nothing; the real
// prune removes the full and the first inc (merged into their dependants) and every
// remaining point restores the same bytes as before; an empty policy is a usage error.
func TestBackupPruneCommand(t *testing.T) {
	f := newRepoFixture(t)
	before := map[string][]byte{}
	for _, p := range f.points["web"] {
		before[p.ID] = restoreBytes(t, f.web, p)
	}
	if r := run(t, "backup", "prune", "--target", f.dir); r.code != ExitUsage {
		t.Errorf("prune without a policy: exit %d", r.code)
	}
	if r := run(t, "backup", "prune", "--target", f.dir, "--keep-daily", "-3"); r.code != ExitUsage {
		t.Errorf("prune --keep-daily -3: exit %d", r.code)
	}
	snapshot := func() string {
		out, _ := exec.Command("sh", "-c", "cd "+f.dir+" && find . -type f ! -name '.lock*' | sort | xargs md5sum").Output()
		return string(out)
	}
	pre := snapshot()
	r := mustRun(t, "--dry-run", "--vmid", "web", "backup", "prune", "--target", f.dir, "--keep-last", "2")
	if snapshot() != pre { // lock files aside
		t.Error("--dry-run changed the repository")
	}
	ps := f.points["web"]
	for _, want := range []string{
		"web: keep   " + ps[3].ID + "  last #1",
		"web: keep   " + ps[2].ID + "  last #2",
		"web: remove " + ps[0].ID,
		"web: merge  " + ps[2].ID, // inc2 gets inc1's and the full's data
		"web: merge  " + ps[3].ID, // the diff gets the full's
		"dry run: nothing was changed",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("dry run output lacks %q:\n%s", want, r.stdout)
		}
	}
	r = mustRun(t, "--vmid", "web", "-o", "json", "backup", "prune", "--target", f.dir, "--keep-last", "2")
	var rows []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("%v: %s", err, r.stdout)
	}
	left, err := f.web.Points()
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 2 || left[0].ID != ps[2].ID || left[1].ID != ps[3].ID {
		t.Fatalf("after prune: %v", left)
	}
	for _, p := range left {
		if got := restoreBytes(t, f.web, p); !bytes.Equal(got, before[p.ID]) {
			t.Errorf("point %s restores differently after the prune", p.ID)
		}
	}
	if dbs, _ := f.db.Points(); len(dbs) != 2 {
		t.Errorf("prune of web touched db: %d points", len(dbs))
	}
	mustRun(t, "backup", "verify", "--target", f.dir, "--read-data")
	// keep-within with an injected clock, through the options struct.
	var out, errb bytes.Buffer
	_, g := NewRootCommand(&out, &errb)
	g.Timeout, g.Output, g.VMID = 30, "text", "db"
	if err := g.setup(); err != nil {
		t.Fatal(err)
	}
	o := &BackupPruneOptions{Target: f.dir, Now: func() time.Time { return f.points["db"][1].Started.Add(30 * time.Minute) }}
	if err := (spanValue{&o.Policy.Within}).Set("45s"); err == nil {
		t.Error("45s accepted as a span")
	}
	if err := (spanValue{&o.Policy.Within}).Set("1h"); err != nil {
		t.Fatal(err)
	}
	if err := runBackupPrune(context.Background(), g, o); err != nil {
		t.Fatal(err)
	}
	if dbs, _ := f.db.Points(); len(dbs) != 1 || dbs[0].Level != "copy" {
		t.Errorf("keep-within 1h left %v\n%s", dbs, out.String())
	}
}

// TestBackupListVerifyReadOnly: a repository mounted read-only (a replica, a
// snapshot of the backup volume) can be listed and verified; the readers' lock is
// then not needed, nobody can prune it.
func TestBackupListVerifyReadOnly(t *testing.T) {
	f := newRepoFixture(t)
	// A fresh guest directory without lock files, as after an rsync that skips them.
	if err := os.Remove(filepath.Join(f.web.Dir, repo.ReadersLockFile)); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	ro := filepath.Join(t.TempDir(), "ro")
	if err := os.Mkdir(ro, 0o700); err != nil {
		t.Fatal(err)
	}
	qemu(t, "mount", "--bind", f.dir, ro)
	defer exec.Command("umount", ro).Run()
	qemu(t, "mount", "-o", "remount,ro,bind", ro)
	r := mustRun(t, "-o", "json", "backup", "list", "--target", ro)
	if strings.Count(r.stdout, `"id"`) != 6 {
		t.Errorf("read-only list: %s", r.stdout)
	}
	mustRun(t, "backup", "verify", "--target", ro, "--read-data")
	if r := run(t, "backup", "prune", "--target", ro, "--keep-last", "1"); r.code == ExitOK {
		t.Error("prune of a read-only repository succeeded")
	}
}
