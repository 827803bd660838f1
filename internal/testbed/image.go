package testbed

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const imgTimeout = 2 * time.Minute

// ReadImage returns length guest-visible bytes at offset of the image at path, following
// its backing chain. It opens the image with -U (no lock), so it works while a VM uses
// the image; data the VM has not flushed yet may be missing (Domain.WriteDisk flushes).
// Reading past the end of the image fails the test.
func ReadImage(t testing.TB, path string, offset int64, length int) []byte {
	t.Helper()
	if offset < 0 || length < 0 {
		t.Fatalf("testbed: ReadImage(%s, %d, %d): negative range", path, offset, length)
	}
	// qemu-img dd works in whole blocks; read the aligned superset and cut it.
	// QEMU 7.2's dd treats count as the end block when skip is given (it reads blocks
	// skip..count-1); a fixed dd reads count blocks from skip. With count set to the end
	// block, the output starts at the right place and is long enough either way.
	const bs = 4096
	start := offset / bs * bs
	end := (offset + int64(length) + bs - 1) / bs * bs
	out := filepath.Join(t.TempDir(), "read.raw")
	mustRun(t, imgTimeout, "qemu-img", "dd", "-U", "-O", "raw", "bs="+strconv.Itoa(bs),
		"skip="+strconv.FormatInt(start/bs, 10), "count="+strconv.FormatInt(end/bs, 10),
		"if="+path, "of="+out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	lo, hi := offset-start, offset-start+int64(length)
	if hi > int64(len(b)) {
		t.Fatalf("testbed: ReadImage(%s): range %d+%d is past the end of the image", path, offset, length)
	}
	return b[lo:hi]
}

// ImageSum returns the hex sha256 of the whole guest-visible content of the image at
// path (its backing chain included), read with -U like ReadImage. Two images with the
// same content and virtual size have the same sum regardless of format or layering.
func ImageSum(t testing.TB, path string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "sum.raw")
	mustRun(t, imgTimeout, "qemu-img", "convert", "-U", "-O", "raw", path, out)
	f, err := os.Open(out)
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("testbed: %v", err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// NewDataDisk creates a qcow2 image of mib MiB at path holding an empty ext4 file
// system, mode 0600. The test guest mounts such a disk at /data when it is vda.
func NewDataDisk(t testing.TB, path string, mib int) {
	t.Helper()
	raw := path + ".raw.tmp"
	defer os.Remove(raw)
	f, err := os.OpenFile(raw, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	err = f.Truncate(int64(mib) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	mustRun(t, imgTimeout, "mkfs.ext4", "-q", "-F", "-L", "data", raw)
	mustRun(t, imgTimeout, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path)
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatalf("testbed: %v", err)
	}
}

// newBlankDisk creates an empty qcow2 image of mib MiB at path, mode 0600.
func newBlankDisk(t testing.TB, path string, mib int) {
	t.Helper()
	mustRun(t, imgTimeout, "qemu-img", "create", "-q", "-f", "qcow2", path, fmt.Sprintf("%dM", mib))
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatalf("testbed: %v", err)
	}
}

// imageChain lists the image files of path's backing chain, path first.
func imageChain(path string) ([]string, error) {
	out, err := run(imgTimeout, "qemu-img", "info", "--backing-chain", "-U", "--output=json", path)
	if err != nil {
		return nil, err
	}
	var infos []struct {
		Filename string `json:"filename"`
	}
	if err := json.Unmarshal(out, &infos); err != nil {
		return nil, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	chain := make([]string, 0, len(infos))
	for _, i := range infos {
		chain = append(chain, i.Filename)
	}
	return chain, nil
}

// GuestFile returns the content of file name (an absolute path inside the file system)
// on the ext4 file system in the image at path, e.g. GuestFile(t, snap, "/counter")
// for the writer's counter in a snapshot of a guest's data disk. The image is read
// with -U; for a disk in use the result is only meaningful if the guest file system
// was frozen or the image is a snapshot.
func GuestFile(t testing.TB, path, name string) []byte {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "fs.raw")
	mustRun(t, imgTimeout, "qemu-img", "convert", "-U", "-O", "raw", path, raw)
	cmd := exec.Command("debugfs", "-R", "cat "+name, raw)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	// debugfs reports errors such as a missing file on stderr and still exits 0; the
	// only other thing it prints there is its version banner.
	var problems []string
	for _, l := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		if l != "" && !strings.HasPrefix(l, "debugfs ") {
			problems = append(problems, l)
		}
	}
	if err != nil || len(problems) > 0 {
		t.Fatalf("testbed: reading %s from the file system in %s: %v %s", name, path, err, strings.Join(problems, "; "))
	}
	return stdout.Bytes()
}

// FsckImage runs a forced read-only e2fsck on the ext4 file system in the image at
// path (read with -U) and returns an error carrying e2fsck's output if the file system
// is not clean.
func FsckImage(t testing.TB, path string) error {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "fsck.raw")
	mustRun(t, imgTimeout, "qemu-img", "convert", "-U", "-O", "raw", path, raw)
	out, err := exec.Command("e2fsck", "-f", "-n", raw).CombinedOutput()
	if err != nil {
		return fmt.Errorf("e2fsck -f -n on %s: %w\n%s", path, err, out)
	}
	return nil
}
