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
	"time"
)

// DefaultLockDir holds one lock file per guest. Locks are advisory flock(2) locks,
// released by the kernel when the process dies, so a crashed run never leaves a stale
// lock behind.
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

// LockGuest takes the cross-process lock of one guest (key from driver.Guest.Key),
// waiting until ctx ends. Every command that changes a guest takes it. The returned
// function releases it.
func LockGuest(ctx context.Context, dir, key string) (func(), error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating lock directory %s: %w", dir, err)
	}
	name := filepath.Join(dir, sanitize(key)+".lock")
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock file %s: %w", name, err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			holder, _ := os.ReadFile(name)
			f.Close()
			return nil, fmt.Errorf("%w (%s, held by %s); gave up after --timeout: retry later, or raise --timeout to wait longer", ErrGuestLocked, name, strings.TrimSpace(string(holder)))
		case <-time.After(50 * time.Millisecond):
		}
	}
	// Record the holder for the message a waiting run prints.
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(fmt.Sprintf("pid %d\n", os.Getpid())), 0)
	return func() {
		_ = f.Truncate(0)
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
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
