package repo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
)

// lockState is this process's hold on one lock file. The process opens the file once
// and shares the descriptor between its holders: on NFS, flock is emulated with POSIX
// record locks, which belong to the process and are all dropped when any descriptor
// of the file is closed, so a second descriptor must never be opened and closed while
// the lock is held.
type lockState struct {
	f       *os.File
	readers int  // shared holders in this process
	writer  bool // an exclusive holder in this process
}

var (
	locksMu sync.Mutex
	locks   = map[string]*lockState{}
)

// lockPath takes the lock on path (exclusive or shared), creating the file 0600. It
// polls until it gets the lock or ctx ends.
func lockPath(ctx context.Context, path string, exclusive bool) (func(), error) {
	wait := 10 * time.Millisecond
	for {
		ok, err := tryLock(path, exclusive)
		if err != nil {
			return nil, err
		}
		if ok {
			var once sync.Once
			return func() { once.Do(func() { unlockPath(path, exclusive) }) }, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the lock %s, held by another autosnap: %w", path, context.Cause(ctx))
		case <-time.After(wait):
		}
		if wait < 250*time.Millisecond {
			wait *= 2
		}
	}
}

func tryLock(path string, exclusive bool) (bool, error) {
	locksMu.Lock()
	defer locksMu.Unlock()
	st := locks[path]
	if st != nil {
		if st.writer || exclusive {
			return false, nil
		}
		st.readers++
		return true, nil
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil && !exclusive && (errors.Is(err, syscall.EROFS) || errors.Is(err, os.ErrPermission)) {
		// A reader of a repository mounted read-only: nobody can prune it either.
		f, err = os.Open(path)
		if errors.Is(err, os.ErrNotExist) {
			locks[path] = &lockState{readers: 1}
			return true, nil
		}
	}
	if err != nil {
		return false, fmt.Errorf("opening the lock file: %w", err)
	}
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	if err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) || errors.Is(err, syscall.EAGAIN) {
			return false, nil
		}
		return false, fmt.Errorf("locking %s: %w", path, err)
	}
	st = &lockState{f: f}
	if exclusive {
		st.writer = true
	} else {
		st.readers = 1
	}
	locks[path] = st
	return true, nil
}

func unlockPath(path string, exclusive bool) {
	locksMu.Lock()
	defer locksMu.Unlock()
	st := locks[path]
	if st == nil {
		return
	}
	if exclusive {
		st.writer = false
	} else {
		st.readers--
	}
	if st.writer || st.readers > 0 {
		return
	}
	delete(locks, path)
	if st.f != nil {
		_ = syscall.Flock(int(st.f.Fd()), syscall.LOCK_UN)
		st.f.Close()
	}
}

// heldExclusive reports whether this process holds path's exclusive lock.
func heldExclusive(path string) bool {
	locksMu.Lock()
	defer locksMu.Unlock()
	st := locks[path]
	return st != nil && st.writer
}
