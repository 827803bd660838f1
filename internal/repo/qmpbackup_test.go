package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseQmpbackupName(t *testing.T) {
	cases := []struct {
		name string
		want qbName
		ok   bool
	}{
		{"FULL-1764460800-vda.qcow2", qbName{level: "full", stamp: 1764460800, disk: "vda.qcow2"}, true},
		{"INC-1764460800-vm-100-disk-0.qcow2.partial", qbName{level: "inc", stamp: 1764460800, disk: "vm-100-disk-0.qcow2", partial: true}, true},
		{"COPY-1764460800-hd.img", qbName{level: "copy", stamp: 1764460800, disk: "hd.img"}, true},
		{"FULL-1764460800", qbName{level: "full", stamp: 1764460800}, true}, // before v0.2x
		{"INC-1764460800.partial", qbName{level: "inc", stamp: 1764460800, partial: true}, true},
		{"FULL-vda.qcow2", qbName{level: "full", disk: "vda.qcow2"}, true}, // --no-timestamp symlink
		{"DIFF-1764460800-vda.qcow2", qbName{}, false},                     // qmpbackup has no diff
		{"vda.qcow2.config", qbName{}, false},
		{"uuid", qbName{}, false},
		{"image", qbName{}, false},
	}
	for _, c := range cases {
		got, ok := parseQmpbackupName(c.name)
		if ok != c.ok || got != c.want {
			t.Errorf("%s: %+v %v, want %+v %v", c.name, got, ok, c.want, c.ok)
		}
	}
}

// qbImage creates a qcow2 image of 4 MiB at path and writes each "pattern@MiB"
// region (256 KiB; pattern 0 writes zeroes with write -z, as a backup job stores
// zeroed clusters).
func qbImage(t *testing.T, path string, writes ...string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", path, "4M").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	qbWrite(t, path, writes...)
}

func qbWrite(t *testing.T, path string, writes ...string) {
	t.Helper()
	for _, w := range writes {
		var pat, off int
		if _, err := fmt.Sscanf(w, "%d@%d", &pat, &off); err != nil {
			t.Fatal(err)
		}
		cmd := fmt.Sprintf("write -P %d %d 262144", pat, off<<20)
		if pat == 0 {
			cmd = fmt.Sprintf("write -z %d 262144", off<<20)
		}
		if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", cmd, path).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
}

func rawSum(t *testing.T, img string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "x.raw")
	if b, err := exec.Command("qemu-img", "convert", "-O", "raw", img, out).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))
}

func fileSums(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %x\n", p, sha256.Sum256(data))
		return nil
	})
	return b.String()
}

// TestQmpbackupLayouts: the layouts qmpbackup wrote over its versions read as the
// same points, and each complete point restores the content the disk had then (a
// reference image that received the same writes in order); the INCs carry no
// backing file, except after `qmprestore rebase`, which set absolute ones — a
// restore names the chain itself either way and changes no file.
func TestQmpbackupLayouts(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	ref := filepath.Join(t.TempDir(), "ref.qcow2")
	qbImage(t, ref)
	type run struct {
		level  string
		writes []string
	}
	runs := []run{{"FULL", []string{"1@0", "2@1"}}, {"INC", []string{"3@1"}}, {"INC", []string{"0@0", "4@3"}}, {"COPY", nil}, {"INC", []string{"5@2"}}}
	layouts := map[string]func(level string, stamp int64) string{
		// current: per-disk directory named after the disk file
		"current": func(l string, s int64) string { return fmt.Sprintf("vda.qcow2/%s-%d-vda.qcow2", l, s) },
		// up to v0.45: directory named after the device, files without the disk's name
		"old": func(l string, s int64) string { return fmt.Sprintf("ide0-hd0/%s-%d", l, s) },
		// --no-subdir
		"flat": func(l string, s int64) string { return fmt.Sprintf("%s-%d-vda.qcow2", l, s) },
		// --monthly
		"monthly": func(l string, s int64) string { return fmt.Sprintf("2026-11/vda.qcow2/%s-%d-vda.qcow2", l, s) },
	}
	sums := make([]string, len(runs))
	for i, r := range runs {
		qbWrite(t, ref, r.writes...)
		sums[i] = rawSum(t, ref)
	}
	for name, path := range layouts {
		t.Run(name, func(t *testing.T) {
			target := filepath.Join(root, name)
			uuidDir := target
			if name == "monthly" {
				uuidDir = filepath.Join(target, "2026-11")
			}
			if err := os.MkdirAll(uuidDir, 0o700); err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(uuidDir, "uuid"), []byte("0d9c7d1e-3e0c-4c52-9a5e-7c2b1d0e6f11"), 0o600)
			var acc []string // every write so far: a FULL or COPY holds them all
			var files []string
			for i, r := range runs {
				acc = append(acc, r.writes...)
				f := filepath.Join(target, path(r.level, 1764460800+int64(i)*3600))
				if r.level == "INC" {
					qbImage(t, f, r.writes...)
				} else {
					qbImage(t, f, acc...)
				}
				files = append(files, f)
			}
			if name == "old" {
				// qmprestore rebase: each INC's backing file set to its predecessor.
				for i := 1; i < len(files); i++ {
					if runs[i].level != "INC" {
						continue
					}
					prev := files[i-1]
					if runs[i-1].level == "COPY" {
						prev = files[i-2]
					}
					if out, err := exec.Command("qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", prev, files[i]).CombinedOutput(); err != nil {
						t.Fatalf("%v: %s", err, out)
					}
				}
			}
			if lay, err := DetectLayout(target); err != nil || lay != LayoutQmpbackup {
				t.Fatalf("DetectLayout: %v %v", lay, err)
			}
			before := fileSums(t, target)
			qt, err := OpenQmpbackup(ctx, target)
			if err != nil {
				t.Fatal(err)
			}
			if len(qt.Guests) != 1 || qt.Guests[0].ID.Name != name || qt.Guests[0].ID.UUID != "0d9c7d1e-3e0c-4c52-9a5e-7c2b1d0e6f11" {
				t.Fatalf("guests %+v", qt.Guests)
			}
			g := qt.Guests[0]
			ps := g.Points()
			if len(ps) != len(runs) {
				t.Fatalf("%d points, want %d", len(ps), len(runs))
			}
			wantDisk := "vda"
			if name == "old" {
				wantDisk = "ide0-hd0"
			}
			for i, p := range ps {
				if p.Level != strings.ToLower(runs[i].level) || p.State != QmpbackupComplete || len(p.Disks) != 1 || p.Disks[0].Name != wantDisk ||
					p.Started.Unix() != 1764460800+int64(i)*3600 || p.Disks[0].VirtualSize != 4<<20 {
					t.Errorf("point %d: %+v", i, p)
				}
				out := filepath.Join(t.TempDir(), "out.qcow2")
				if err := g.RestoreDisk(ctx, p, wantDisk, out, "qcow2"); err != nil {
					t.Fatal(err)
				}
				if got := rawSum(t, out); got != sums[i] {
					t.Errorf("point %d (%s): restored content differs from the disk's at that point", i, p.Level)
				}
			}
			if ps[4].Parent != ps[2].ID || ps[4].Chain != ps[0].ID || ps[3].Chain != "" || len(ps[4].Images(wantDisk)) != 4 {
				t.Errorf("chain of the last inc: parent %s chain %s images %v", ps[4].Parent, ps[4].Chain, ps[4].Images(wantDisk))
			}
			if after := fileSums(t, target); after != before {
				t.Errorf("reading and restoring changed the qmpbackup files:\n%s\n%s", before, after)
			}
		})
	}
}

// TestQmpbackupIncompleteAndBroken: a .partial point is incomplete, the incs after it
// in the same chain are broken, an inc with no FULL before it is broken; none of them
// restores, the next FULL starts a sound chain again.
func TestQmpbackupIncompleteAndBroken(t *testing.T) {
	ctx := context.Background()
	target := filepath.Join(t.TempDir(), "vm")
	os.MkdirAll(target, 0o700)
	os.WriteFile(filepath.Join(target, "uuid"), []byte("u1"), 0o600)
	qbImage(t, filepath.Join(target, "vdb.qcow2/INC-1764460000-vdb.qcow2"), "1@0")
	qbImage(t, filepath.Join(target, "vda.qcow2/FULL-1764460800-vda.qcow2"), "1@0")
	qbImage(t, filepath.Join(target, "vda.qcow2/INC-1764464400-vda.qcow2.partial"), "2@0")
	qbImage(t, filepath.Join(target, "vda.qcow2/INC-1764468000-vda.qcow2"), "3@0")
	qbImage(t, filepath.Join(target, "vda.qcow2/FULL-1764471600-vda.qcow2"), "4@0")
	qbImage(t, filepath.Join(target, "vda.qcow2/INC-1764475200-vda.qcow2"), "5@0")
	qt, err := OpenQmpbackup(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	g := qt.Guests[0]
	var got []string
	for _, p := range g.Points() {
		got = append(got, p.Level+":"+p.State)
		if !p.Restorable() {
			if err := g.RestoreDisk(ctx, p, p.Disks[0].Name, filepath.Join(t.TempDir(), "x.qcow2"), ""); err == nil || !strings.Contains(err.Error(), p.State) {
				t.Errorf("restore of %s point %s: %v", p.State, p.ID, err)
			}
		}
	}
	want := "inc:broken full:complete inc:incomplete inc:broken full:complete inc:complete"
	if strings.Join(got, " ") != want {
		t.Errorf("states %q, want %q", strings.Join(got, " "), want)
	}
	p, err := g.Newest()
	if err != nil || p.Started.Unix() != 1764475200 {
		t.Errorf("newest restorable: %+v %v", p, err)
	}
	if p, err := g.Point("INC-1764468000-vda.qcow2"); err != nil || p.State != QmpbackupBroken || !strings.Contains(p.Reason, "incomplete point "+NewID(time.Unix(1764464400, 0), LevelInc)) {
		t.Errorf("point by file name: %+v %v", p, err)
	}
}

func TestDetectLayout(t *testing.T) {
	root := t.TempDir()
	mk := func(rel, content string) {
		p := filepath.Join(root, rel)
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mk("empty/.keep", "")
	mk("auto/"+RepoFile, `{"format":1,"id":"x"}`)
	mk("qb/uuid", "u")
	mk("qb/vda.qcow2/FULL-1764460800-vda.qcow2", "")
	mk("fleet/web/uuid", "u")
	mk("fleet/db/2026-11/uuid", "u")
	mk("fleet/notes/readme.txt", "")
	mk("mixed/"+RepoFile, `{"format":1,"id":"x"}`)
	mk("mixed/old/uuid", "u")
	mk("other/vda.qcow2/disk.img", "")
	for dir, want := range map[string]Layout{"empty": LayoutNone, "auto": LayoutAutosnap, "qb": LayoutQmpbackup, "fleet": LayoutQmpbackup, "other": LayoutNone} {
		if got, err := DetectLayout(filepath.Join(root, dir)); err != nil || got != want {
			t.Errorf("%s: %v %v, want %v", dir, got, err, want)
		}
	}
	if _, err := DetectLayout(filepath.Join(root, "mixed")); !errors.Is(err, ErrMixedLayout) || !strings.Contains(err.Error(), "separate directories") {
		t.Errorf("mixed: %v", err)
	}
	qt, err := OpenQmpbackup(context.Background(), filepath.Join(root, "fleet"))
	if err != nil || len(qt.Guests) != 2 || qt.Guests[0].ID.Name != "db" || qt.Guests[1].ID.Name != "web" {
		t.Fatalf("fleet: %+v %v", qt, err)
	}
	if _, err := qt.Find("nosuch"); err == nil || !strings.Contains(err.Error(), "db, web") {
		t.Errorf("Find: %v", err)
	}
	if err := NeitherError(filepath.Join(root, "other")); !errors.Is(err, ErrNotRepo) || !strings.Contains(err.Error(), "qmpbackup") {
		t.Errorf("NeitherError: %v", err)
	}
}

// TestQmpbackupRaw: a raw FULL (qmpbackup --include-raw) restores as it is, to qcow2
// and raw; a chain with a raw INC is refused with the reason.
func TestQmpbackupRaw(t *testing.T) {
	ctx := context.Background()
	target := filepath.Join(t.TempDir(), "vm")
	q := filepath.Join(t.TempDir(), "src.qcow2")
	qbImage(t, q, "3@1", "4@2")
	os.MkdirAll(filepath.Join(target, "disk3.raw"), 0o700)
	os.WriteFile(filepath.Join(target, "uuid"), []byte("u1"), 0o600)
	full := filepath.Join(target, "disk3.raw/FULL-1764460800-disk3.raw")
	if out, err := exec.Command("qemu-img", "convert", "-O", "raw", q, full).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	inc := filepath.Join(target, "disk3.raw/INC-1764464400-disk3.raw")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "raw", inc, "4M").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	qt, err := OpenQmpbackup(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	g := qt.Guests[0]
	ps := g.Points()
	if len(ps) != 2 || ps[0].Disks[0].Name != "disk3" || ps[0].Disks[0].Format != "raw" {
		t.Fatalf("points %+v", ps)
	}
	want := rawSum(t, q)
	for _, f := range []string{"qcow2", "raw"} {
		out := filepath.Join(t.TempDir(), "out."+f)
		if err := g.RestoreDisk(ctx, ps[0], "disk3", out, f); err != nil {
			t.Fatal(err)
		}
		if rawSum(t, out) != want {
			t.Errorf("raw FULL restored as %s differs", f)
		}
	}
	// Into block devices: one too small is refused before anything is written; one
	// large enough receives the disk.
	for _, size := range []int{1 << 20, 4 << 20} {
		backing := filepath.Join(t.TempDir(), "dev.img")
		if err := os.WriteFile(backing, bytes.Repeat([]byte{0xff}, size), 0o600); err != nil {
			t.Fatal(err)
		}
		b, err := exec.Command("losetup", "-f", "--show", backing).Output()
		if err != nil {
			t.Fatal(err)
		}
		dev := strings.TrimSpace(string(b))
		defer exec.Command("losetup", "-d", dev).Run()
		err = g.RestoreDisk(ctx, ps[0], "disk3", dev, "raw")
		got, rerr := os.ReadFile(dev)
		if rerr != nil {
			t.Fatal(rerr)
		}
		if size < 4<<20 {
			if err == nil || !strings.Contains(err.Error(), "use a larger one") || !bytes.Equal(got, bytes.Repeat([]byte{0xff}, size)) {
				t.Errorf("raw FULL into a %d-byte device: %v (device changed: %v), want a refusal that writes nothing", size, err, !bytes.Equal(got, bytes.Repeat([]byte{0xff}, size)))
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		copyOut := filepath.Join(t.TempDir(), "dev.raw")
		if err := os.WriteFile(copyOut, got, 0o600); err != nil {
			t.Fatal(err)
		}
		if rawSum(t, copyOut) != want {
			t.Errorf("raw FULL restored into a device differs")
		}
	}

	err = g.RestoreDisk(ctx, ps[1], "disk3", filepath.Join(t.TempDir(), "x.qcow2"), "qcow2")
	if err == nil || !strings.Contains(err.Error(), "raw incs mark unchanged blocks by holes") {
		t.Errorf("restore of a raw inc chain: %v", err)
	}
}
