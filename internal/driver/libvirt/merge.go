package libvirt

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/driver"
)

// runStep executes one planned merge step without a journal (chain collapse does;
// deletes go through execute). It decides at execution time, like execute, whether to
// merge live or with qemu-img, and refuses when an image it needs is missing. Every
// step leaves valid chains when it fails or is interrupted: a commit changes only the
// base, whose content nobody else reads, until the images above are switched to it,
// and files are deleted last.
func (d *Driver) runStep(ctx context.Context, g driver.Guest, dom golibvirt.Domain, s mergeStep, progress driver.ProgressFunc) error {
	rs := recordStep(s, s.live || s.activeTop)
	return d.execStep(ctx, dom, &rs, func() error { return nil }, progress, func(string) {})
}

// rebaseUnsafe points image at base without copying: base already holds the content
// the old backing file had.
func (d *Driver) rebaseUnsafe(ctx context.Context, image, base string) error {
	if !d.local {
		return fmt.Errorf("switching %s to %s needs autosnap on the guest's host", image, base)
	}
	ctx, cancel := d.rpcCtx(ctx)
	defer cancel()
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
// progress(disk, done, 10000). started is called (once) when the first progress above
// zero arrives. ctx ending kills the command; so does making no progress for stall
// (neither a new percentage nor a byte written, which a huge image needs between two
// percent steps), with an error wrapping errStalled. The command also dies with
// autosnap (SIGKILL on the parent's death), so that a killed run leaves no merge
// running on its own that the next run would race.
func runProgress(ctx context.Context, disk string, progress driver.ProgressFunc, stall time.Duration, started func(), name string, args ...string) error {
	cctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	cmd := exec.CommandContext(cctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
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
	var pct atomic.Uint64 // hundredths of a percent
	if stall > 0 {
		done := make(chan struct{})
		defer close(done)
		go func() {
			watch := stallWatch{limit: stall}
			tick := time.NewTicker(min(max(stall/8, 50*time.Millisecond), time.Second))
			defer tick.Stop()
			for {
				select {
				case <-done:
					return
				case <-cctx.Done():
					return
				case now := <-tick.C:
					if watch.observe(pct.Load()+bytesWritten(cmd.Process.Pid), now) {
						cancel(fmt.Errorf("%s made %w for %s", name, errStalled, stall))
						return
					}
				}
			}
		}()
	}
	sc := bufio.NewScanner(out)
	sc.Split(splitCR)
	for sc.Scan() {
		// qemu-img -p prints "    (12.34/100%)" and a carriage return.
		line := strings.TrimSpace(sc.Text())
		p, ok := strings.CutPrefix(line, "(")
		p, ok2 := strings.CutSuffix(p, "/100%)")
		if !ok || !ok2 {
			continue
		}
		v, err := strconv.ParseFloat(p, 64)
		if err != nil {
			continue
		}
		pct.Store(uint64(v * 100))
		if progress != nil {
			progress(disk, uint64(v*100), 10000)
		}
		if v > 0 && started != nil {
			started()
			started = nil
		}
	}
	if err := cmd.Wait(); err != nil {
		if cctx.Err() != nil {
			if cause := context.Cause(cctx); errors.Is(cause, errStalled) {
				return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), cause)
			}
			return fmt.Errorf("%s %s interrupted: %w", name, strings.Join(args, " "), ctx.Err())
		}
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// bytesWritten returns how many bytes process pid has written (wchar of
// /proc/<pid>/io), 0 if unknown.
func bytesWritten(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/io")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "wchar: "); ok {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
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
