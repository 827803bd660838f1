package libvirt

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/driver"
)

// runStep executes one planned merge step. Every step leaves valid chains when it
// fails or is interrupted: a commit changes only the base, whose content nobody else
// reads, until the images above are switched to it, and files are deleted last.
func (d *Driver) runStep(ctx context.Context, g driver.Guest, dom golibvirt.Domain, s mergeStep, progress driver.ProgressFunc) error {
	if s.kind == stepRemove {
		if err := d.removeFile(s.top); err != nil {
			return fmt.Errorf("disk %s: removing the unused overlay %s: %w", s.disk, s.top, err)
		}
		return nil
	}
	if s.live {
		// libvirt deletes the merged files itself unless another branch still names
		// top as its backing file; that one is switched to base first.
		offBranch := len(s.above) > 1 || (len(s.above) == 1 && s.activeTop)
		if err := d.commitLive(ctx, g, dom, s.disk, s.top, s.base, s.activeTop, !offBranch, progress); err != nil {
			return fmt.Errorf("disk %s: merging %s into %s: %w", s.disk, s.top, s.base, err)
		}
		if !offBranch {
			return nil
		}
		chains, _, err := d.chains(ctx, dom)
		if err != nil {
			return err
		}
		for _, a := range s.above {
			if indexOf(chains[s.disk], a) >= 0 {
				continue // QEMU switched it already
			}
			if err := d.rebaseUnsafe(ctx, a, s.base); err != nil {
				return fmt.Errorf("disk %s: %w", s.disk, err)
			}
		}
		return d.removeFiles(s.removed())
	}
	if !d.local {
		return fmt.Errorf("disk %s: merging images the guest does not have open needs autosnap on the guest's host (qemu:///system there), or start the guest first", s.disk)
	}
	args := []string{"commit", "-p", "-f", "qcow2"}
	if len(s.between) > 0 {
		args = append(args, "-b", s.base) // implies -d: top is deleted below
	} else {
		args = append(args, "-d") // top is deleted below: emptying it would be wasted writes
	}
	if err := runProgress(ctx, s.disk, progress, "qemu-img", append(args, s.top)...); err != nil {
		return fmt.Errorf("disk %s: merging %s into %s: %w", s.disk, s.top, s.base, err)
	}
	for _, a := range s.above {
		if err := d.rebaseUnsafe(ctx, a, s.base); err != nil {
			return fmt.Errorf("disk %s: %w", s.disk, err)
		}
	}
	if s.activeTop {
		fmtName, err := imageFormat(ctx, s.base)
		if err != nil {
			return err
		}
		if err := d.repointDisk(ctx, dom, s.disk, s.base, fmtName); err != nil {
			return fmt.Errorf("disk %s: %w", s.disk, err)
		}
	}
	return d.removeFiles(s.removed())
}

func (d *Driver) removeFiles(files []string) error {
	for _, f := range files {
		if err := d.removeFile(f); err != nil {
			return fmt.Errorf("removing merged image %s: %w", f, err)
		}
	}
	return nil
}

// rebaseUnsafe points image at base without copying: base already holds the content
// the old backing file had.
func (d *Driver) rebaseUnsafe(ctx context.Context, image, base string) error {
	if !d.local {
		return fmt.Errorf("switching %s to %s needs autosnap on the guest's host", image, base)
	}
	baseFmt, err := imageFormat(ctx, base)
	if err != nil {
		return err
	}
	if _, err := runCmd(ctx, "qemu-img", "rebase", "-u", "-f", "qcow2", "-F", baseFmt, "-b", base, image); err != nil {
		return err
	}
	return nil
}

func imageFormat(ctx context.Context, path string) (string, error) {
	out, err := runCmd(ctx, "qemu-img", "info", "-U", "--output=json", path)
	if err != nil {
		return "", err
	}
	var info imageInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return "", fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	return info.Format, nil
}

// runProgress runs a qemu-img command with -p and reports its percentages as
// progress(disk, done, 10000). ctx ending kills the command.
func runProgress(ctx context.Context, disk string, progress driver.ProgressFunc, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("%s is not installed (Debian: apt-get install qemu-utils): %w", name, err)
		}
		return err
	}
	sc := bufio.NewScanner(out)
	sc.Split(splitCR)
	for sc.Scan() {
		// qemu-img -p prints "    (12.34/100%)" and a carriage return.
		line := strings.TrimSpace(sc.Text())
		pct, ok := strings.CutPrefix(line, "(")
		if pct, ok2 := strings.CutSuffix(pct, "/100%)"); ok && ok2 && progress != nil {
			if v, err := strconv.ParseFloat(pct, 64); err == nil {
				progress(disk, uint64(v*100), 10000)
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s %s interrupted: %w", name, strings.Join(args, " "), ctx.Err())
		}
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func splitCR(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}
