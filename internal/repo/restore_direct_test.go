package repo

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestRestoreOntoTmpfs: restoring onto tmpfs (which refuses O_DIRECT before Linux
// 6.6, so convertOut falls back to the page cache there; newer kernels accept it)
// writes a complete, bit-identical image, raw and qcow2.
func TestRestoreOntoTmpfs(t *testing.T) {
	s := newSim(t, "vda")
	g := openGuest(t, t.TempDir(), s.id)
	s.write("vda", 0x31, 0, 2<<20)
	full := s.backup(g, LevelFull, "", t0)
	s.write("vda", 0x32, 1<<20+512, 70000)
	inc := s.backup(g, LevelInc, full.ID, t0.Add(time.Hour))
	shm, err := os.MkdirTemp("/dev/shm", "astrestore-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(shm)
	for _, format := range []string{"raw", "qcow2"} {
		out := filepath.Join(shm, "vda."+format)
		if err := g.RestoreDisk(context.Background(), inc, "vda", out, format); err != nil {
			t.Fatalf("restore %s onto tmpfs: %v", format, err)
		}
		back := filepath.Join(shm, "back.raw")
		run(t, "qemu-img", "convert", "-f", format, "-O", "raw", out, back)
		got, _ := os.ReadFile(back)
		want, _ := os.ReadFile(s.expect[inc.ID]["vda"])
		if !bytes.Equal(got, want) {
			t.Errorf("%s restored onto tmpfs differs (first difference at %d)", format, firstDiff(got, want))
		}
	}
}
