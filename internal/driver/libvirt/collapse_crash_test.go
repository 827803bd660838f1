//go:build crashtest

package libvirt_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/crash"
	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/testbed"
)

// TestCollapseCrashPoint: crash.CollapseStarted is reached while the collapse's
// commit runs — libvirt's block job exists (running guest) or qemu-img commit is
// working (shut-off guest) — and the chain is still whole. The point pauses there;
// once released the collapse finishes with the data intact.
func TestCollapseCrashPoint(t *testing.T) {
	for i, st := range []testbed.State{testbed.Paused, testbed.Shutoff} {
		t.Run(st.String(), func(t *testing.T) {
			flag := filepath.Join(t.TempDir(), "point")
			// The process counts the points it passed: the i-th collapse stops.
			t.Setenv("AUTOSNAP_CRASH_AT", fmt.Sprintf("%s#%d", crash.CollapseStarted, i+1))
			t.Setenv("AUTOSNAP_CRASH_FILE", flag)
			t.Setenv("AUTOSNAP_CRASH_MODE", "pause")
			bed := testbed.Libvirt(t)
			a := bed.NewDomain(t, testbed.DomainSpec{State: st, DiskMiB: 64})
			base := a.Disks[0].Path
			state := driver.StatePaused
			if st == testbed.Shutoff {
				state = driver.StateShutoff
			}
			d := open(t)
			g := sbGuest(d, a, state)
			ctx := sbCtx(t)
			for i, n := range []string{"k1", "k2"} {
				if _, err := d.CreateSnapshot(ctx, g, driver.CreateOptions{Name: n}); err != nil {
					t.Fatal(err)
				}
				top := a.Chain(t, "vda")[0]
				if st == testbed.Shutoff {
					sbWrite(t, top, int64(i)*16*sbBlk, byte(i+1), 16*sbBlk)
				} else {
					a.WriteDisk(t, "vda", int64(i)*16*sbBlk, byte(i+1), 16*sbBlk)
				}
			}
			if err := d.DeleteSnapshotTree(ctx, g, "k1", driver.DeleteOptions{Children: true, MetadataOnly: true}); err != nil {
				t.Fatal(err)
			}
			chain := a.Chain(t, "vda")
			want := testbed.ImageSum(t, chain[0])
			done := make(chan error, 1)
			go func() {
				done <- d.CollapseChain(context.Background(), g, driver.CollapseOptions{ForceBase: []string{base}})
			}()
			deadline := time.Now().Add(2 * time.Minute)
			for {
				if _, err := os.Stat(flag); err == nil {
					break
				}
				select {
				case err := <-done:
					t.Fatalf("the collapse ended (%v) without reaching %s", err, crash.CollapseStarted)
				default:
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s not reached", crash.CollapseStarted)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if st == testbed.Paused {
				found, _, _, _, _, err := bed.Conn.DomainGetBlockJobInfo(a.Dom, "vda", 0)
				if err != nil || found == 0 {
					t.Errorf("at %s there is no block job on vda (%d, %v)", crash.CollapseStarted, found, err)
				}
			} else if !qemuImgCommitRunning(chain[0]) {
				t.Errorf("at %s no qemu-img commit of %s runs", crash.CollapseStarted, chain[0])
			}
			if err := os.Remove(flag); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if c := a.Chain(t, "vda"); len(c) != 1 || c[0] != base {
				t.Fatalf("chain after the collapse: %v", c)
			}
			if got := testbed.ImageSum(t, base); got != want {
				t.Errorf("the collapsed disk does not hold the data the chain showed")
			}
		})
	}
}

func qemuImgCommitRunning(top string) bool {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 2 && filepath.Base(args[0]) == "qemu-img" && args[1] == "commit" && strings.Contains(string(b), top) {
			return true
		}
	}
	return false
}
