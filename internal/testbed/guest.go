package testbed

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// GuestFiles is a bootable tiny Linux guest for direct kernel boot.
type GuestFiles struct {
	Kernel string // vmlinuz
	Initrd string // gzip'd cpio initramfs with busybox, qemu-ga and /init
}

// GuestCmdline is the kernel command line for the test guest. With writer set, the
// guest appends an incrementing counter line to /data/counter and syncs every ~100 ms.
func GuestCmdline(writer bool) string {
	c := "console=ttyS0 loglevel=4"
	if writer {
		c += " autosnap.writer=1"
	}
	return c
}

var (
	guestMu     sync.Mutex
	guestCached GuestFiles
)

// GuestImage returns the test guest, building it with scripts/build-test-guest.sh on
// first use. The result is cached in CacheDir/guest-<hash>/, where the hash covers the
// script, the installed kernels, busybox and qemu-ga, so a change to any of them
// rebuilds. Concurrent callers in any number of processes are safe: the build holds an
// flock on CacheDir/.lock and builds into a temporary directory that is renamed into
// place. The returned files must not be modified.
func GuestImage(t testing.TB) GuestFiles {
	t.Helper()
	guestMu.Lock()
	defer guestMu.Unlock()
	if guestCached.Kernel != "" {
		return guestCached
	}
	script := buildScript(t)
	hash, err := guestHash(script)
	if err != nil {
		t.Fatalf("testbed: guest image inputs: %v", err)
	}
	if err := os.MkdirAll(CacheDir, 0o755); err != nil {
		t.Fatalf("testbed: %v", err)
	}
	lock, err := os.OpenFile(filepath.Join(CacheDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatalf("testbed: flock %s: %v", lock.Name(), err)
	}
	// Closing the file releases the lock.

	final := filepath.Join(CacheDir, "guest-"+hash[:16])
	files := GuestFiles{Kernel: filepath.Join(final, "vmlinuz"), Initrd: filepath.Join(final, "initrd.img")}
	if nonEmpty(files.Kernel) && nonEmpty(files.Initrd) {
		guestCached = files
		return files
	}
	// Holding the lock, any temporary build directory belongs to a crashed build.
	if old, _ := filepath.Glob(filepath.Join(CacheDir, ".build-*")); len(old) > 0 {
		for _, d := range old {
			os.RemoveAll(d)
		}
	}
	tmp, err := os.MkdirTemp(CacheDir, ".build-")
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	defer os.RemoveAll(tmp)
	start := time.Now()
	if out, err := run(5*time.Minute, "bash", script, tmp); err != nil {
		t.Fatalf("testbed: building the test guest failed: %v\n%s", err, out)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		t.Fatalf("testbed: %v", err)
	}
	os.RemoveAll(final) // an incomplete directory left by hand
	if err := os.Rename(tmp, final); err != nil {
		t.Fatalf("testbed: %v", err)
	}
	t.Logf("testbed: built test guest in %v: %s", time.Since(start).Round(time.Millisecond), final)
	guestCached = files
	return files
}

func nonEmpty(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Size() > 0
}

// buildScript locates scripts/build-test-guest.sh: first from the working directory
// upwards (go test runs in the package directory), then from this source file.
func buildScript(t testing.TB) string {
	t.Helper()
	const rel = "scripts/build-test-guest.sh"
	var tried []string
	if wd, err := os.Getwd(); err == nil {
		for dir := wd; ; dir = filepath.Dir(dir) {
			if isModuleRoot(dir) {
				p := filepath.Join(dir, rel)
				if nonEmpty(p) {
					return p
				}
				tried = append(tried, p)
				break
			}
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		p := filepath.Join(filepath.Dir(file), "..", "..", rel)
		if nonEmpty(p) {
			return filepath.Clean(p)
		}
		tried = append(tried, p)
	}
	t.Fatalf("testbed: cannot find %s (tried %v)", rel, tried)
	return ""
}

func isModuleRoot(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) == 2 && fields[0] == "module" {
			return fields[1] == "github.com/autosnap/autosnap"
		}
	}
	return false
}

// guestHash hashes everything the build script's output depends on.
func guestHash(script string) (string, error) {
	h := sha256.New()
	kernels, _ := filepath.Glob("/boot/vmlinuz-*")
	if len(kernels) == 0 {
		return "", fmt.Errorf("no /boot/vmlinuz-* (install linux-image-cloud-amd64)")
	}
	sort.Strings(kernels)
	for _, k := range kernels {
		fi, err := os.Stat(k)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "kernel %s %d\n", k, fi.Size())
	}
	for _, p := range []string{script, "/bin/busybox", "/usr/sbin/qemu-ga"} {
		f, err := os.Open(p)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "file %s\n", filepath.Base(p))
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
