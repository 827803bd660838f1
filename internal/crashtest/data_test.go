//go:build crashtest

package crashtest

// The data model: every generation writes its own pattern over the same regions of each
// patterned disk, so each snapshot's view and the guest's current view are known
// byte for byte, and a view that mixes two generations shows.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// region is a byte range of a disk.
type region struct{ off, n int64 }

func (r region) String() string { return fmt.Sprintf("%d+%d", r.off, r.n) }

// layout is the regions every generation writes: unaligned small ones and one of
// bigMiB MiB that makes merges take long enough to interrupt.
func layout(bigMiB int) []region {
	return []region{
		{0, 1 << 20},
		{5<<20 + 512, 64<<10 + 512},
		{16 << 20, int64(bigMiB) << 20},
	}
}

// zeroRegion is never written: it must read as zeros in every view.
var zeroRegion = region{10 << 20, 1 << 20}

// pattern is the byte generation gen writes on the disk-th patterned disk; generation
// 0 is the blank disk. Generations go up to 14.
func pattern(gen, disk int) byte {
	if gen == 0 {
		return 0
	}
	return byte(0x10*gen + disk + 1)
}

// imgTimeout bounds one qemu-img or qemu-io command.
const imgTimeout = 5 * time.Minute

func runTool(name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), imgTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// writeOffline writes pattern over r into the image at path with qemu-io; the image
// must not be in use.
func writeOffline(path string, r region, p byte) error {
	out, err := runTool("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0x%02x %d %d", p, r.off, r.n), "-c", "flush", path)
	if err != nil {
		return err
	}
	if strings.Contains(string(out), "failed") {
		return fmt.Errorf("qemu-io write to %s: %s", path, out)
	}
	return nil
}

// checkView compares the guest-visible content of the image at path (its backing
// chain included, read without locking it) with want: pattern p over every region in
// regions and zeros over zeroRegion. It returns one line per region that differs,
// naming how many bytes, the first offset and its value; an unreadable image is one
// line too.
func checkView(scratch, path string, regions []region, p byte) []string {
	raw, err := os.CreateTemp(scratch, "view-*.raw")
	if err != nil {
		return []string{err.Error()}
	}
	raw.Close()
	defer os.Remove(raw.Name())
	if _, err := runTool("qemu-img", "convert", "-U", "-O", "raw", path, raw.Name()); err != nil {
		return []string{fmt.Sprintf("cannot read %s: %v", path, err)}
	}
	f, err := os.Open(raw.Name())
	if err != nil {
		return []string{err.Error()}
	}
	defer f.Close()
	var problems []string
	check := func(r region, want byte) {
		bad, first, got, err := compareRegion(f, r, want)
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("region %s: %v", r, err))
		case bad > 0:
			problems = append(problems, fmt.Sprintf("region %s: %d bytes differ, first at %d (0x%02x, want 0x%02x)", r, bad, first, got, want))
		}
	}
	for _, r := range regions {
		check(r, p)
	}
	check(zeroRegion, 0)
	return problems
}

// compareRegion counts the bytes of r in f that are not want and reports the first.
func compareRegion(f *os.File, r region, want byte) (bad, first int64, got byte, err error) {
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	first = -1
	for off := r.off; off < r.off+r.n; off += chunk {
		n := min(int64(chunk), r.off+r.n-off)
		m, err := f.ReadAt(buf[:n], off)
		if int64(m) < n {
			if err == nil || errors.Is(err, io.EOF) {
				err = fmt.Errorf("the image ends at %d", off+int64(m))
			}
			return bad, first, got, err
		}
		for i, b := range buf[:n] {
			if b != want {
				if first < 0 {
					first, got = off+int64(i), b
				}
				bad++
			}
		}
	}
	return bad, first, got, nil
}

// imageInfo is one image of qemu-img info --backing-chain.
type imageInfo struct {
	Filename string `json:"filename"`
	Format   string `json:"format"`
}

// dirFiles lists the regular files in dir (not descending).
func dirFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if e.Type().IsRegular() {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out, nil
}
