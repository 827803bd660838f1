package qcow2

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func qemuImg(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func qemuIO(t *testing.T, img string, cmds ...string) {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.Command("qemu-io", append(args, img)...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-io %v: %v\n%s", cmds, err, out)
	}
}

// mapAllocated is Allocated as computed from `qemu-img map`.
func mapAllocated(t *testing.T, img string) uint64 {
	t.Helper()
	var ext []struct {
		Length uint64 `json:"length"`
		Depth  int    `json:"depth"`
		Data   bool   `json:"data"`
		Zero   bool   `json:"zero"`
	}
	if err := json.Unmarshal([]byte(qemuImg(t, "map", "-U", "-f", "qcow2", "--output=json", img)), &ext); err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, e := range ext {
		if e.Depth == 0 && e.Data && !e.Zero {
			n += e.Length
		}
	}
	return n
}

type info struct {
	Format      string `json:"format"`
	VirtualSize uint64 `json:"virtual-size"`
	Backing     string `json:"backing-filename"`
	BackingFmt  string `json:"backing-filename-format"`
	ClusterSize uint64 `json:"cluster-size"`
}

func imgInfo(t *testing.T, img string) info {
	t.Helper()
	var i info
	if err := json.Unmarshal([]byte(qemuImg(t, "info", "-U", "--output=json", img)), &i); err != nil {
		t.Fatal(err)
	}
	return i
}

// TestCreateIsWhatQemuImgCreates: images made by Create pass `qemu-img check`, have
// the size, backing file and format qemu-img reports for its own, read through to
// their backing file, take writes, and ReadHeader and Allocated agree with qemu-img
// info and map, for sizes with a partial last cluster and an L1 table of several
// entries.
func TestCreateIsWhatQemuImgCreates(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", base, "3G")
	qemuIO(t, base, "write -P 0x5a 0 1M", "write -P 0x5b 2G 64k")
	for _, tc := range []struct {
		name    string
		size    uint64
		backing string
	}{
		{"plain", 2 << 30, ""},
		{"odd", 10<<20 + 512, ""},
		{"backed", 3 << 30, "base.qcow2"},
		{"big", 5 << 40, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ours := filepath.Join(dir, tc.name+".qcow2")
			theirs := filepath.Join(dir, tc.name+".ref.qcow2")
			bfmt := ""
			args := []string{"create", "-q", "-f", "qcow2"}
			if tc.backing != "" {
				bfmt = "qcow2"
				args = append(args, "-F", "qcow2", "-b", tc.backing)
			}
			if err := Create(ours, tc.size, tc.backing, bfmt); err != nil {
				t.Fatal(err)
			}
			qemuImg(t, append(args, theirs, itoa(tc.size))...)
			if err := Create(ours, tc.size, tc.backing, bfmt); err == nil {
				t.Error("Create over an existing file succeeded")
			}
			if st, _ := os.Stat(ours); st.Mode().Perm() != 0o600 {
				t.Errorf("mode %o, want 0600", st.Mode().Perm())
			}
			qemuImg(t, "check", ours)
			a, b := imgInfo(t, ours), imgInfo(t, theirs)
			if a != b {
				t.Errorf("qemu-img info: ours %+v, qemu-img's %+v", a, b)
			}
			h, err := ReadHeader(ours)
			if err != nil {
				t.Fatal(err)
			}
			if h.Size != b.VirtualSize || h.Backing != b.Backing || h.BackingFormat != b.BackingFmt {
				t.Errorf("ReadHeader %+v, qemu-img info %+v", h, b)
			}
			if tc.backing != "" {
				qemuImg(t, "compare", "-f", "qcow2", "-F", "qcow2", ours, base)
			}
			qemuIO(t, ours, "write -P 0x11 65536 200k", "write -z 1M 128k")
			qemuImg(t, "check", ours)
			if got, want := mustAllocated(t, ours), mapAllocated(t, ours); got != want {
				t.Errorf("Allocated %d, qemu-img map %d", got, want)
			}
		})
	}
}

// TestAllocatedMatchesQemuImgMap on the images a backup writes: scattered data, zero
// clusters hiding the backing file's data, a partial last cluster, compressed data.
func TestAllocatedMatchesQemuImgMap(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", base, itoa(100<<20+4096))
	qemuIO(t, base, "write -P 1 0 20M", "write -P 2 100M 4k")
	top := filepath.Join(dir, "top.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "base.qcow2", top)
	qemuIO(t, top, "write -P 3 4k 4k", "write -P 4 30M 1M", "write -z 0 128k", "write -z -u 10M 1M", "write -P 5 100M 4k")
	comp := filepath.Join(dir, "comp.qcow2")
	qemuImg(t, "convert", "-c", "-f", "qcow2", "-O", "qcow2", base, comp)
	for _, img := range []string{base, top, comp} {
		if got, want := mustAllocated(t, img), mapAllocated(t, img); got != want || want == 0 {
			t.Errorf("%s: Allocated %d, qemu-img map %d", filepath.Base(img), got, want)
		}
	}
	raw := filepath.Join(dir, "x.raw")
	os.WriteFile(raw, make([]byte, 4096), 0o600)
	if _, err := ReadHeader(raw); !errors.Is(err, ErrNotQcow2) {
		t.Errorf("ReadHeader of a raw file: %v", err)
	}
	ext := filepath.Join(dir, "ext.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", ext, "1M")
	if _, err := Allocated(ext); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Allocated of an extended-L2 image: %v, want ErrUnsupported", err)
	}
}

func mustAllocated(t *testing.T, img string) uint64 {
	t.Helper()
	n, err := Allocated(img)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func itoa(n uint64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// TestAllocatedBytesFallsBackToQemuImgMap: an image the in-process readers refuse
// (extended L2) still gets qemu-img map's answer; a readable one gets Allocated's.
func TestAllocatedBytesFallsBackToQemuImgMap(t *testing.T) {
	dir := t.TempDir()
	ext := filepath.Join(dir, "ext.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", ext, "4M")
	qemuIO(t, ext, "write -P 7 1M 256k")
	plain := filepath.Join(dir, "plain.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", plain, "4M")
	qemuIO(t, plain, "write -P 7 1M 256k")
	for _, img := range []string{ext, plain} {
		got, err := AllocatedBytes(context.Background(), img)
		if err != nil {
			t.Fatal(err)
		}
		if want := mapAllocated(t, img); got != want || want == 0 {
			t.Errorf("%s: AllocatedBytes %d, qemu-img map %d", filepath.Base(img), got, want)
		}
	}
	if _, err := AllocatedBytes(context.Background(), filepath.Join(dir, "missing.qcow2")); err == nil {
		t.Error("AllocatedBytes of a missing file: no error")
	}
}
