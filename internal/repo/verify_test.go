package repo

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// dataOffset is the host offset, in file, of the first data cluster qemu-img map
// reports for the image itself (depth 0).
func dataOffset(t *testing.T, file string) int64 {
	t.Helper()
	var m []struct {
		Depth  int   `json:"depth"`
		Data   bool  `json:"data"`
		Offset int64 `json:"offset"`
	}
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "map", "--output=json", file)), &m); err != nil {
		t.Fatal(err)
	}
	for _, e := range m {
		if e.Depth == 0 && e.Data {
			return e.Offset
		}
	}
	t.Fatalf("%s has no data cluster", file)
	return 0
}

func flipByte(t *testing.T, file string, off int64) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func verifyChain(t *testing.T) (*sim, *Guest, []Point) {
	s := newSim(t, "vda", "vdb")
	g := openGuest(t, t.TempDir(), s.id)
	s.write("vda", 0x61, 0, 1<<20)
	s.write("vdb", 0x62, 0, 1<<20)
	full := s.backup(g, LevelFull, "", t0)
	s.write("vda", 0x63, 2<<20, 1<<20)
	inc := s.backup(g, LevelInc, full.ID, t0.Add(time.Hour))
	s.write("vdb", 0x64, 3<<20, 1<<20)
	inc2 := s.backup(g, LevelInc, inc.ID, t0.Add(2*time.Hour))
	return s, g, []Point{full, inc, inc2}
}

// TestVerifyFindsACorruptedByte: one byte flipped in a data cluster of an inc is a
// checksum fault naming that file, and only that file.
func TestVerifyFindsACorruptedByte(t *testing.T) {
	_, g, ps := verifyChain(t)
	file := filepath.Join(ps[1].Dir, "vda.qcow2")
	flipByte(t, file, dataOffset(t, file)+1000)
	faults, err := g.Verify(context.Background(), VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(faults) != 1 || faults[0].File != file || !strings.Contains(faults[0].Problem, "checksum mismatch") || faults[0].Point != ps[1].ID || faults[0].Disk != "vda" {
		t.Fatalf("faults %v, want one checksum fault on %s", faults, file)
	}
}

// TestVerifyFindsBrokenChainsAndImages: a missing backing point, a damaged qcow2
// header and an unreadable manifest are each reported against the file at fault.
func TestVerifyFindsBrokenChainsAndImages(t *testing.T) {
	_, g, ps := verifyChain(t)
	ctx := context.Background()
	// A corrupted L1 table: qemu-img check and --read-data see it.
	f2 := filepath.Join(ps[2].Dir, "vdb.qcow2")
	// The L1 table's first entry points to an unaligned L2 table.
	l1 := int64(readBE64(t, f2, 40))
	writeBE64(t, f2, l1, readBE64(t, f2, l1)+512)
	faults, err := g.Verify(ctx, VerifyOptions{ReadData: true})
	if err != nil {
		t.Fatal(err)
	}
	var check, read, sum bool
	for _, f := range faults {
		if f.File != f2 {
			t.Errorf("fault on an intact file: %v", f)
		}
		check = check || strings.Contains(f.Problem, "qemu-img check")
		read = read || strings.Contains(f.Problem, "reading every block")
		sum = sum || strings.Contains(f.Problem, "checksum mismatch")
	}
	if !check || !read || !sum {
		t.Errorf("faults on a broken L1 table: %v", faults)
	}
	// The full goes missing: its files are named as missing backing files.
	if err := os.Rename(ps[0].Dir, filepath.Join(g.Dir, ".elsewhere")); err != nil {
		t.Fatal(err)
	}
	faults, err = g.Verify(ctx, VerifyOptions{Points: []string{ps[1].ID}})
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(ps[1].Dir, "../"+ps[0].ID+"/vda.qcow2")
	found := false
	for _, f := range faults {
		if f.File == want && strings.Contains(f.Problem, "missing") {
			found = true
		}
	}
	if !found {
		t.Errorf("faults with the full gone: %v (want %s missing)", faults, want)
	}
	// An unreadable manifest.
	if err := os.WriteFile(filepath.Join(ps[1].Dir, ManifestFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	faults, _ = g.Verify(ctx, VerifyOptions{})
	found = false
	for _, f := range faults {
		if f.File == filepath.Join(ps[1].Dir, ManifestFile) {
			found = true
		}
	}
	if !found {
		t.Errorf("faults with a torn manifest: %v", faults)
	}
}

func readBE64(t *testing.T, file string, off int64) uint64 {
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 8)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	return v
}

func writeBE64(t *testing.T, file string, off int64, v uint64) {
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 8)
	for i := 7; i >= 0; i-- {
		b[i] = byte(v)
		v >>= 8
	}
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}
