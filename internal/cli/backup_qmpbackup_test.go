package cli

import (
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var updateQmpbackup = flag.Bool("update-qmpbackup", false, "rewrite testdata/qmpbackup/*.golden")

// qbTree builds a directory of qmpbackup targets with qemu-img (no VM): web1 with two
// disks, an inc left .partial by an interrupted run, a copy, and an inc after the
// .partial one (broken); db1 with --monthly chains in qmpbackup ≤ v0.45 naming;
// flat with --no-subdir and --no-timestamp. Every image is 4 MiB with one 64 KiB
// region written, so sizes are stable.
func qbTree(t *testing.T) string {
	t.Helper()
	// A root of fixed length keeps the text table's column widths the same on every
	// run once the path is redacted.
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	base := "/tmp/ast-qbgolden-" + hex.EncodeToString(rnd[:])
	if err := os.Mkdir(base, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	root := filepath.Join(base, "qmpbackup")
	img := func(rel string) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", p, "4M").CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 7 0 65536", p).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		mt := time.Unix(1764460800, 0)
		if err := os.Chtimes(p, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	file := func(rel, content string) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	file("web1/uuid", "5f0c9a52-8f0e-4b8e-9d76-3c1f2a9b7e10")
	file("web1/vda.qcow2.config", "{}")
	for _, d := range []string{"vda", "vdb"} {
		img(fmt.Sprintf("web1/%s.qcow2/FULL-1764460800-%s.qcow2", d, d))
		img(fmt.Sprintf("web1/%s.qcow2/INC-1764464400-%s.qcow2", d, d))
		img(fmt.Sprintf("web1/%s.qcow2/INC-1764468000-%s.qcow2.partial", d, d))
		img(fmt.Sprintf("web1/%s.qcow2/INC-1764475200-%s.qcow2", d, d))
	}
	img("web1/vda.qcow2/COPY-1764471600-vda.qcow2")
	file("db1/2026-10/uuid", "0a1b2c3d-0000-4000-8000-000000000001")
	img("db1/2026-10/ide0-hd0/FULL-1759276800")
	img("db1/2026-10/ide0-hd0/INC-1759280400")
	file("db1/2026-11/uuid", "0a1b2c3d-0000-4000-8000-000000000002")
	img("db1/2026-11/ide0-hd0/FULL-1761955200")
	file("flat/uuid", "9e8d7c6b-0000-4000-8000-00000000000f")
	img("flat/FULL-1764460800-disk0.img")
	img("flat/INC-1764464400-disk0.img")
	img("flat/disk1.qcow2")
	if err := os.Symlink("disk1.qcow2", filepath.Join(root, "flat/FULL-disk1.qcow2")); err != nil {
		t.Fatal(err)
	}
	return root
}

func checkQmpbackupGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "qmpbackup", name+".golden")
	if *updateQmpbackup {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update-qmpbackup to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from %s:\n%s", name, path, got)
	}
}

// TestQmpbackupListGolden: backup list of a synthetic directory of qmpbackup
// targets, text and JSON, against golden files; --vmid selects a target by
// directory name or uuid; an empty directory and a mixed one are refused with the
// reason.
func TestQmpbackupListGolden(t *testing.T) {
	local := time.Local
	time.Local = time.UTC
	t.Cleanup(func() { time.Local = local })
	root := qbTree(t)
	redact := func(s string) string { return strings.ReplaceAll(s, root, "$DIR") }

	r := mustRun(t, "backup", "list", "--target", root)
	checkQmpbackupGolden(t, "list", redact(r.stdout))
	r = mustRun(t, "-o", "json", "backup", "list", "--target", root)
	checkQmpbackupGolden(t, "list-json", redact(r.stdout))

	r = mustRun(t, "--vmid", "0a1b2c3d-0000-4000-8000-000000000002", "backup", "list", "--target", root)
	if strings.Count(r.stdout, "| db1 ") != 3 || strings.Contains(r.stdout, "web1") {
		t.Errorf("--vmid by uuid:\n%s", r.stdout)
	}
	r = mustRun(t, "--vmid", "web1", "-o", "json", "backup", "list", "--target", filepath.Join(root, "web1"))
	if strings.Count(r.stdout, `"web1"`) != 5 {
		t.Errorf("a single target:\n%s", r.stdout)
	}

	r = run(t, "backup", "list", "--target", t.TempDir())
	if r.code != ExitFailure || !strings.Contains(r.stderr, "neither an autosnap repository") || !strings.Contains(r.stderr, "qmpbackup") {
		t.Errorf("an empty directory: exit %d %s", r.code, r.stderr)
	}
	if err := os.WriteFile(filepath.Join(root, "autosnap-repo.json"), []byte(`{"format":1,"id":"x"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	r = run(t, "backup", "list", "--target", root)
	if r.code != ExitFailure || !strings.Contains(r.stderr, "mixed backup directory") {
		t.Errorf("a mixed directory: exit %d %s", r.code, r.stderr)
	}
	r = run(t, "--vmid", "web1", "restore", "--target", root, "--to", t.TempDir())
	if r.code != ExitUsage || !strings.Contains(r.stderr, "separate directories") {
		t.Errorf("restore from a mixed directory: exit %d %s", r.code, r.stderr)
	}
}

// TestQmpbackupRestoreOptions: on the synthetic tree, --until takes a time (the newest
// complete point at or before it), --dry-run writes nothing, --disk restores one
// disk, a broken point is refused with its reason, and --in-place is refused.
func TestQmpbackupRestoreOptions(t *testing.T) {
	local := time.Local
	time.Local = time.UTC
	t.Cleanup(func() { time.Local = local })
	root := qbTree(t)
	to := filepath.Join(t.TempDir(), "out")

	r := mustRun(t, "--dry-run", "--vmid", "web1", "restore", "--target", root, "--until", "2025-11-30 01:30", "--to", to)
	if !strings.Contains(r.stdout, "Restoring point 20251130T010000Z-inc") || !strings.Contains(r.stdout, "would write disk vdb to "+filepath.Join(to, "vdb.qcow2")+" (qcow2) from 2 image(s)") {
		t.Errorf("dry run:\n%s", r.stdout)
	}
	if _, err := os.Stat(to); err == nil {
		t.Errorf("--dry-run created %s", to)
	}
	// A date means the end of that day: the newest complete point is the copy (the
	// 04:00 inc is broken).
	r = mustRun(t, "--vmid", "web1", "restore", "--target", root, "--until", "2025-11-30", "--to", to, "--disk", "vda", "--format", "raw")
	if !strings.Contains(r.stdout, "Restoring point 20251130T030000Z-copy") {
		t.Errorf("--until a date:\n%s", r.stdout)
	}
	if ents, _ := os.ReadDir(to); len(ents) != 1 || ents[0].Name() != "vda.raw" {
		t.Errorf("--disk vda wrote %v", ents)
	}
	r = run(t, "--vmid", "web1", "restore", "--target", root, "--until", "20251130T040000Z-inc", "--to", to)
	if r.code != ExitFailure || !strings.Contains(r.stderr, "broken: it depends on the incomplete point 20251130T020000Z-inc") {
		t.Errorf("restore of a broken point: exit %d %s", r.code, r.stderr)
	}
	r = run(t, "--vmid", "web1", "restore", "--target", root, "--in-place", "--force")
	if r.code != ExitUsage || !strings.Contains(r.stderr, "records no guest identity") {
		t.Errorf("--in-place: exit %d %s", r.code, r.stderr)
	}
	r = run(t, "--vmid", "nosuch", "restore", "--target", root, "--to", to)
	if r.code != ExitUsage || !strings.Contains(r.stderr, "db1, flat, web1") {
		t.Errorf("unknown --vmid: exit %d %s", r.code, r.stderr)
	}
}

// TestQmpbackupVerifyPruneRefused: verify and prune, which read and change only
// autosnap repositories, refuse a qmpbackup directory and say which commands read it.
func TestQmpbackupVerifyPruneRefused(t *testing.T) {
	root := qbTree(t)
	before := fmt.Sprint(treeSums(t, root))
	for _, args := range [][]string{{"backup", "verify", "--target", root}, {"backup", "prune", "--target", root, "--keep-last", "1"}} {
		r := run(t, args...)
		if r.code == 0 || !strings.Contains(r.stderr, "holds qmpbackup backups: autosnap reads them with backup list and restore only") {
			t.Errorf("%v: exit %d %s", args, r.code, r.stderr)
		}
	}
	if fmt.Sprint(treeSums(t, root)) != before {
		t.Errorf("verify or prune changed the qmpbackup files")
	}
}
