package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ext is one write to a simulated guest disk: pattern pat, or zeroes when zero.
type ext struct {
	off, n int64
	pat    byte
	zero   bool
}

// simDisk is a guest disk simulated by a raw file (the guest's view), with the writes
// a dirty bitmap would track since the chain's full and since the last point.
type simDisk struct {
	name                 string
	size                 int64
	raw                  string
	all                  []ext
	sinceFull, sinceLast []ext
}

// sim plays a guest and its Backupper: backups are qcow2 files built with qemu-img
// and qemu-io exactly as a push backup writes them (changed blocks only, zeroed
// blocks as zero clusters, backing file = Pending.Backing).
type sim struct {
	t      *testing.T
	dir    string
	id     GuestID
	disks  []*simDisk
	expect map[string]map[string]string // point → disk → raw image of the guest then
}

const simSize = 16 << 20

func newSim(t *testing.T, names ...string) *sim {
	t.Helper()
	s := &sim{t: t, dir: t.TempDir(), expect: map[string]map[string]string{},
		id: GuestID{UUID: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", Name: "web 1", Node: "h1", Driver: "libvirt"}}
	for _, n := range names {
		d := &simDisk{name: n, size: simSize, raw: filepath.Join(s.dir, n+".raw")}
		if err := os.WriteFile(d.raw, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(d.raw, d.size); err != nil {
			t.Fatal(err)
		}
		s.disks = append(s.disks, d)
	}
	return s
}

func (s *sim) disk(name string) *simDisk {
	for _, d := range s.disks {
		if d.name == name {
			return d
		}
	}
	s.t.Fatalf("no disk %s", name)
	return nil
}

// write writes pattern pat (0 with zero) at off..off+n of disk.
func (s *sim) write(disk string, pat byte, off, n int64) { s.put(disk, ext{off: off, n: n, pat: pat}) }
func (s *sim) zero(disk string, off, n int64)            { s.put(disk, ext{off: off, n: n, zero: true}) }

func (s *sim) put(disk string, e ext) {
	s.t.Helper()
	d := s.disk(disk)
	f, err := os.OpenFile(d.raw, os.O_WRONLY, 0)
	if err != nil {
		s.t.Fatal(err)
	}
	defer f.Close()
	b := bytes.Repeat([]byte{e.pat}, int(e.n))
	if e.zero {
		b = make([]byte, e.n)
	}
	if _, err := f.WriteAt(b, e.off); err != nil {
		s.t.Fatal(err)
	}
	d.all = append(d.all, e)
	d.sinceFull = append(d.sinceFull, e)
	d.sinceLast = append(d.sinceLast, e)
}

// resize grows or shrinks disk (the simulated block_resize).
func (s *sim) resize(disk string, size int64) {
	d := s.disk(disk)
	if err := os.Truncate(d.raw, size); err != nil {
		s.t.Fatal(err)
	}
	var kept []ext
	for _, e := range d.all {
		if e.off+e.n <= size {
			kept = append(kept, e)
		}
	}
	d.all, d.size = kept, size
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// writeImage creates file (backed by backing when set) holding the writes exts.
func writeImage(t *testing.T, file, backing string, size int64, exts []ext) {
	t.Helper()
	args := []string{"create", "-q", "-f", "qcow2"}
	if backing != "" {
		args = append(args, "-b", backing, "-F", "qcow2")
	}
	run(t, "qemu-img", append(args, file, fmt.Sprint(size))...)
	for len(exts) > 0 {
		n := min(len(exts), 200)
		io := []string{"-f", "qcow2"}
		for _, e := range exts[:n] {
			if e.zero {
				io = append(io, "-c", fmt.Sprintf("write -z %d %d", e.off, e.n))
			} else {
				io = append(io, "-c", fmt.Sprintf("write -P 0x%02x %d %d", e.pat, e.off, e.n))
			}
		}
		run(t, "qemu-io", append(io, file)...)
		exts = exts[n:]
	}
}

// backup takes a point of level (parent for inc and diff) at instant at, of the
// disks named (all when none).
func (s *sim) backup(g *Guest, level, parent string, at time.Time, only ...string) Point {
	s.t.Helper()
	ctx := context.Background()
	unlock, err := g.Lock(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	defer unlock()
	m := Manifest{Level: level, Parent: parent, Started: at}
	var disks []*simDisk
	for _, d := range s.disks {
		if len(only) == 0 || contains(only, d.name) {
			disks = append(disks, d)
			m.Disks = append(m.Disks, DiskManifest{Name: d.name, VirtualSize: uint64(d.size)})
		}
	}
	p, err := g.Begin(m)
	if err != nil {
		s.t.Fatal(err)
	}
	for _, d := range disks {
		back := p.Backing(d.name)
		exts := d.all
		if back != "" {
			exts = d.sinceLast
			if level == LevelDiff {
				exts = d.sinceFull
			}
		}
		writeImage(s.t, p.File(d.name), back, d.size, exts)
	}
	pt, err := p.Commit(ctx, Manifest{Consistency: "crash", Finished: at.Add(time.Minute), Config: []byte("<domain><name>web 1</name></domain>\n"), Checkpoint: "autosnap-" + p.ID()})
	if err != nil {
		s.t.Fatal(err)
	}
	s.expect[pt.ID] = map[string]string{}
	for _, d := range disks {
		cp := filepath.Join(s.dir, pt.ID+"-"+d.name+".raw")
		run(s.t, "cp", "--sparse=always", d.raw, cp)
		s.expect[pt.ID][d.name] = cp
		if level != LevelCopy {
			d.sinceLast = nil
			if level == LevelFull {
				d.sinceFull = nil
			}
		}
	}
	return pt
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// checkRestore restores every disk of point as raw and as qcow2 and compares both,
// whole, with the guest's disk at the point's instant; it also checks the raw image
// is no more allocated than the guest's.
func (s *sim) checkRestore(g *Guest, p Point) {
	s.t.Helper()
	ctx := context.Background()
	want := s.expect[p.ID]
	if len(want) != len(p.Disks) {
		s.t.Fatalf("point %s has disks %v, expected %d", p.ID, diskNames(p), len(want))
	}
	out := s.t.TempDir()
	for disk, exp := range want {
		raw := filepath.Join(out, disk+".raw")
		if err := g.RestoreDisk(ctx, p, disk, raw, "raw"); err != nil {
			s.t.Fatal(err)
		}
		a, err := os.ReadFile(raw)
		if err != nil {
			s.t.Fatal(err)
		}
		b, err := os.ReadFile(exp)
		if err != nil {
			s.t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			s.t.Errorf("point %s disk %s: restored raw image differs from the guest's disk at that point (first difference at byte %d)", p.ID, disk, firstDiff(a, b))
		}
		// Thin: allocated no more than the 4 KiB blocks holding data, plus one cluster
		// of slack (qemu-img allocates the first block of a raw image to probe it).
		if ra, rb := allocated(s.t, raw), nonZeroBlocks(b)*4096+65536; ra > rb {
			s.t.Errorf("point %s disk %s: restored raw image allocates %d bytes, its data needs %d: not thin", p.ID, disk, ra, rb)
		}
		st, _ := os.Stat(raw)
		if st.Mode().Perm() != 0o600 {
			s.t.Errorf("restored %s has mode %o, want 0600", raw, st.Mode().Perm())
		}
		q := filepath.Join(out, disk+".qcow2")
		if err := g.RestoreDisk(ctx, p, disk, q, "qcow2"); err != nil {
			s.t.Fatal(err)
		}
		back := filepath.Join(out, disk+".back.raw")
		run(s.t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", q, back)
		c, err := os.ReadFile(back)
		if err != nil {
			s.t.Fatal(err)
		}
		if !bytes.Equal(c, b) {
			s.t.Errorf("point %s disk %s: restored qcow2 image differs from the guest's disk (first difference at byte %d)", p.ID, disk, firstDiff(c, b))
		}
		var info imgInfo
		if err := json.Unmarshal([]byte(run(s.t, "qemu-img", "info", "--output=json", q)), &info); err != nil {
			s.t.Fatal(err)
		}
		if info.BackingFilename != "" {
			s.t.Errorf("restored qcow2 %s has a backing file %q", q, info.BackingFilename)
		}
		os.Remove(raw)
		os.Remove(q)
		os.Remove(back)
	}
}

func nonZeroBlocks(b []byte) int64 {
	var n int64
	for i := 0; i < len(b); i += 4096 {
		for _, c := range b[i:min(i+4096, len(b))] {
			if c != 0 {
				n++
				break
			}
		}
	}
	return n
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func allocated(t *testing.T, path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// checkModes fails unless every directory under root is 0700 and every file 0600.
func checkModes(t *testing.T, root string) {
	t.Helper()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		if info.Mode().Perm() != want {
			t.Errorf("%s has mode %o, want %o", path, info.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func openGuest(t *testing.T, dir string, id GuestID) *Guest {
	t.Helper()
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	g, err := r.Guest(id)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func ids(ps []Point) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.ID
	}
	return out
}

var t0 = time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)
