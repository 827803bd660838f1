package repo

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestInterruptedRebaseStaysCorrect checks the claim Prune relies on: a safe
// `qemu-img rebase` SIGKILLed half way (after it wrote part of the data into the
// dependant) leaves the dependant still on its old backing file and reading exactly
// as before, and running it again completes it.
func TestInterruptedRebaseStaysCorrect(t *testing.T) {
	dir := t.TempDir()
	const size = 256 << 20
	full := filepath.Join(dir, "full", "d.qcow2")
	inc := filepath.Join(dir, "inc", "d.qcow2")
	os.Mkdir(filepath.Dir(full), 0o700)
	os.Mkdir(filepath.Dir(inc), 0o700)
	// The guest's disk: 224 MiB of 1 MiB chunks of distinct patterns in the full, a
	// few writes and a zeroed MiB in the inc.
	want := make([]byte, size)
	var fw, iw []ext
	for i := 0; i < 224; i++ {
		fw = append(fw, ext{off: int64(i) << 20, n: 1 << 20, pat: byte(i + 1)})
	}
	iw = []ext{{off: 3 << 20, n: 4096, pat: 0xf1}, {off: 100 << 20, zero: true, n: 1 << 20}, {off: 240 << 20, n: 1 << 20, pat: 0xf2}}
	for _, e := range append(append([]ext{}, fw...), iw...) {
		for j := e.off; j < e.off+e.n; j++ {
			if e.zero {
				want[j] = 0
			} else {
				want[j] = e.pat
			}
		}
	}
	writeImage(t, full, "", size, fw)
	writeImage(t, inc, "../full/d.qcow2", size, iw)
	readAll := func() []byte {
		out := filepath.Join(dir, "out.raw")
		run(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", inc, out)
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		os.Remove(out)
		return b
	}
	before := allocated(t, inc)
	cmd := exec.Command("qemu-img", "rebase", "-f", "qcow2", "-t", "writethrough", "-b", "", inc)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(2 * time.Minute)
	for allocated(t, inc) < before+32<<20 {
		select {
		case err := <-done:
			t.Fatalf("rebase finished (%v) before it could be interrupted; make the image bigger", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("rebase wrote nothing in 2 minutes")
		}
		time.Sleep(2 * time.Millisecond)
	}
	cmd.Process.Kill()
	<-done
	mid := allocated(t, inc)
	info, err := imageInfo(t.Context(), inc)
	if err != nil {
		t.Fatal(err)
	}
	if info.BackingFilename != "../full/d.qcow2" {
		t.Fatalf("after the kill the backing file is %q", info.BackingFilename)
	}
	if mid < before+32<<20 || mid > before+200<<20 {
		t.Fatalf("the kill did not land half way: inc allocates %d bytes, %d before", mid, before)
	}
	if got := readAll(); !bytes.Equal(got, want) {
		t.Fatalf("interrupted rebase changed what the inc reads (first difference at %d)", firstDiff(got, want))
	}
	if msg, err := checkImage(t.Context(), inc); err != nil || msg != "" {
		t.Fatalf("qemu-img check after the kill: %q %v", msg, err)
	}
	run(t, "qemu-img", "rebase", "-f", "qcow2", "-t", "writethrough", "-b", "", inc)
	if err := os.RemoveAll(filepath.Dir(full)); err != nil {
		t.Fatal(err)
	}
	if got := readAll(); !bytes.Equal(got, want) {
		t.Fatalf("completed rebase reads differently (first difference at %d)", firstDiff(got, want))
	}
	t.Logf("killed with %d MiB of 224 written", (mid-before)>>20)
}
