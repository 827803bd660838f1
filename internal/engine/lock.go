package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/autosnap/autosnap/internal/retry"
)

// DefaultLockDir holds one lock file per guest being changed. Locks are advisory
// flock(2) locks, released by the kernel when the process dies, so a crashed run never
// leaves a stale lock behind (only, at worst, an unlocked file the next holder reuses).
func DefaultLockDir() string {
	if os.Geteuid() == 0 {
		return "/run/autosnap/locks"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "autosnap", "locks")
	}
	return filepath.Join(os.TempDir(), "autosnap-"+strconv.Itoa(os.Getuid()), "locks")
}

// ErrGuestLocked means another autosnap process holds a guest's lock.
var ErrGuestLocked = errors.New("guest is locked by another autosnap run")

var (
	errBusy  = errors.New("lock busy")
	errStale = errors.New("lock file replaced")
)

// LockGuest takes the cross-process lock of one guest (key from driver.Guest.Key),
// waiting until ctx ends, polling with the retry package's policy. Every command that
// changes a guest takes it. The returned function releases it and removes the lock
// file, so the lock directory holds files of current holders only.
//
// A lock is held on the file that is at the path when it is taken: a holder removes
// the file before releasing it, so a locker that was waiting on the removed file
// checks, once it has the flock, that the path still names that file (device and
// inode) and otherwise starts again with the file now at the path.
func LockGuest(ctx context.Context, dir, key string) (func(), error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating lock directory %s: %w", dir, err)
	}
	name := filepath.Join(dir, sanitize(key)+".lock")
	var f *os.File
	err := retry.Do(ctx, retry.Default, func() error {
		fh, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return retry.Permanent(fmt.Errorf("opening lock file %s: %w", name, err))
		}
		if err := syscall.Flock(int(fh.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			fh.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return errBusy
			}
			return retry.Permanent(fmt.Errorf("locking %s: %w", name, err))
		}
		if !samePath(fh, name) {
			fh.Close()
			return errStale
		}
		f = fh
		return nil
	})
	if err != nil {
		if errors.Is(err, errBusy) || errors.Is(err, errStale) {
			holder, _ := os.ReadFile(name)
			return nil, fmt.Errorf("%w (%s, held by %s); gave up after --timeout: retry later, or raise --timeout to wait longer", ErrGuestLocked, name, strings.TrimSpace(string(holder)))
		}
		return nil, err
	}
	// Record the holder for the message a waiting run prints.
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(fmt.Sprintf("pid %d\n", os.Getpid())), 0)
	return func() {
		// Remove while still holding the lock: see the doc comment.
		_ = os.Remove(name)
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// samePath reports whether the path still names the open file f.
func samePath(f *os.File, path string) bool {
	var a, b syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &a); err != nil {
		return false
	}
	if err := syscall.Stat(path, &b); err != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			return r
		}
		return '_'
	}, s)
}
