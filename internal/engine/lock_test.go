package engine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Many lockers of a few keys at once: never two holders of one key, and no lock file
// is left behind once every holder is done.
func TestLockGuestConcurrentAndCleansUp(t *testing.T) {
	dir := t.TempDir()
	keys := []string{"h1/uuid-a", "h1/uuid-b", "h2/uuid:c/d"}
	holders := make([]atomic.Int32, len(keys))
	var wg sync.WaitGroup
	var failures atomic.Int32
	for w := range 24 {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := range 40 {
				k := (w + i) % len(keys)
				unlock, err := LockGuest(context.Background(), dir, keys[k])
				if err != nil {
					t.Error(err)
					failures.Add(1)
					return
				}
				if n := holders[k].Add(1); n != 1 {
					t.Errorf("%d holders of %s", n, keys[k])
				}
				time.Sleep(time.Duration(i%3) * 100 * time.Microsecond)
				holders[k].Add(-1)
				unlock()
			}
		}(w)
	}
	wg.Wait()
	if failures.Load() > 0 {
		return
	}
	left, _ := os.ReadDir(dir)
	if len(left) != 0 {
		var names []string
		for _, e := range left {
			names = append(names, e.Name())
		}
		t.Errorf("lock files left behind: %s", strings.Join(names, ", "))
	}
}

// A waiting locker gives up at its context's end and names the holder.
func TestLockGuestTimeoutNamesHolder(t *testing.T) {
	dir := t.TempDir()
	unlock, err := LockGuest(context.Background(), dir, "h1/x")
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = LockGuest(ctx, dir, "h1/x")
	if !errors.Is(err, ErrGuestLocked) || !strings.Contains(err.Error(), "held by pid ") {
		t.Errorf("error %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "h1_x.lock")); err != nil {
		t.Errorf("the holder's lock file: %v", err)
	}
}

// The lock file someone removed while a locker waited on it is not a lock: the
// locker takes the file now at the path.
func TestLockGuestRechecksFileIdentity(t *testing.T) {
	dir := t.TempDir()
	unlock, err := LockGuest(context.Background(), dir, "k")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan func(), 1)
	go func() {
		u, err := LockGuest(context.Background(), dir, "k")
		if err != nil {
			t.Error(err)
		}
		got <- u
	}()
	time.Sleep(100 * time.Millisecond) // the second locker waits on the first file
	unlock()                           // removes the file and releases it
	u2 := <-got
	// A third locker must wait for the second: both hold the file at the path.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if u3, err := LockGuest(ctx, dir, "k"); err == nil {
		u3()
		t.Fatal("two holders at once: the second locker held a removed file")
	}
	u2()
}
