package backup

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func sh(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func rawSum(t *testing.T, dir, file string) [32]byte {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "raw")
	sh(t, dir, "qemu-img", "convert", "-O", "raw", file, raw)
	b, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// TestCompressKeepsChain: compressing an inc keeps its backing file, reads exactly as
// before (data, a region zeroed over the backing's data, what reads through), and
// leaves what the inc does not hold unallocated.
func TestCompressKeepsChain(t *testing.T) {
	dir := t.TempDir()
	pd := filepath.Join(dir, "p1")
	cd := filepath.Join(dir, "p2")
	os.Mkdir(pd, 0o700)
	os.Mkdir(cd, 0o700)
	sh(t, pd, "qemu-img", "create", "-q", "-f", "qcow2", "vda.qcow2", "8M")
	sh(t, pd, "qemu-io", "-c", "write -P 0x11 0 4M", "vda.qcow2")
	sh(t, cd, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "../p1/vda.qcow2", "-F", "qcow2", "vda.qcow2", "8M")
	sh(t, cd, "qemu-io", "-c", "write -P 0x22 1M 1M", "-c", "write -z 2M 1M", "-c", "write -P 0x33 6M 512k", "vda.qcow2")
	file := filepath.Join(cd, "vda.qcow2")
	before := rawSum(t, cd, file)
	if err := compress(context.Background(), file, "../p1/vda.qcow2"); err != nil {
		t.Fatal(err)
	}
	if after := rawSum(t, cd, file); after != before {
		t.Fatal("the compressed inc reads differently")
	}
	var info struct {
		Backing string `json:"backing-filename"`
	}
	if err := json.Unmarshal([]byte(sh(t, cd, "qemu-img", "info", "--output=json", file)), &info); err != nil || info.Backing != "../p1/vda.qcow2" {
		t.Fatalf("backing %q (%v)", info.Backing, err)
	}
	var m []struct {
		Start, Length int64
		Data, Zero    bool
		Depth         int
	}
	if err := json.Unmarshal([]byte(sh(t, cd, "qemu-img", "map", "--output=json", file)), &m); err != nil {
		t.Fatal(err)
	}
	var own int64
	for _, e := range m {
		if e.Depth == 0 {
			own += e.Length
		}
	}
	if own != 2<<20+512<<10 {
		t.Fatalf("the compressed inc holds %d bytes itself, want %d (1M data + 1M zero + 512k): %+v", own, 2<<20+512<<10, m)
	}
	st, _ := os.Stat(file)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
}
