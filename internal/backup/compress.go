package backup

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// compress rewrites the qcow2 file with compressed clusters (zlib, what qemu-img and
// QEMU read natively): `qemu-img convert -c -O qcow2` of the file's own layer into a
// temporary file beside it, fsynced and renamed over it. For an inc or diff the new
// file keeps backing as its backing file and only the clusters the file itself holds
// are rewritten (-B: clusters that read through to the backing file stay
// unallocated; clusters written as zero stay zero clusters), so the chain reads
// exactly as before. It costs a second pass over the point's data after the copy; the
// guest is not involved any more by then.
func compress(ctx context.Context, file, backing string) error {
	tmp := file + ".compress-tmp"
	_ = os.Remove(tmp)
	args := []string{"convert", "-c", "-O", "qcow2", "-o", "compression_type=zlib"}
	if backing != "" {
		args = append(args, "-B", backing, "-F", "qcow2")
	}
	args = append(args, file, tmp)
	cmd := exec.CommandContext(ctx, "qemu-img", args...)
	// A relative backing name is resolved against the files' directory.
	cmd.Dir = filepath.Dir(file)
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("qemu-img %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	f, err := os.OpenFile(tmp, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = f.Chmod(0o600)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, file)
}
