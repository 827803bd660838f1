package libvirt_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/crash"
	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/driver/libvirt"
	"github.com/autosnap/autosnap/internal/testbed"
)

func qemuIOWrite(t *testing.T, image string, off int64, pattern byte, n int) {
	t.Helper()
	out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P %d %d %d", pattern, off, n), image).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-io on %s: %v: %s", image, err, out)
	}
}

// TestDeleteTreeProgressLive deletes a three-level tree of a running guest in one call
// and checks the data of every level, the single remaining image and the progress.
func TestDeleteTreeProgressLive(t *testing.T) {
	d := open(t)
	dom := testbed.Libvirt(t).NewDomain(t, testbed.DomainSpec{DiskMiB: 16})
	g := driver.Guest{Node: d.Node(), Name: dom.Name, UUID: dom.UUID, State: driver.StateRunning}
	ctx := context.Background()
	const n = 1 << 20
	for i := 1; i <= 3; i++ {
		if _, err := d.CreateSnapshot(ctx, g, driver.CreateOptions{Name: fmt.Sprintf("t%d", i)}); err != nil {
			t.Fatal(err)
		}
		dom.WriteDisk(t, "vda", int64(i*n), byte(i), n)
	}
	var mu sync.Mutex
	var seen []string
	err := d.DeleteSnapshotTree(ctx, g, "t1", driver.DeleteOptions{Children: true, Progress: func(disk string, done, total uint64) {
		mu.Lock()
		seen = append(seen, fmt.Sprintf("%s %d/%d", disk, done, total))
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) == 0 || !strings.HasPrefix(seen[0], "vda ") {
		t.Errorf("no progress reported: %v", seen)
	}
	chain := dom.Chain(t, "vda")
	if len(chain) != 1 || chain[0] != dom.Disks[0].Path {
		t.Fatalf("chain %v", chain)
	}
	for i := 1; i <= 3; i++ {
		if got := testbed.ReadImage(t, chain[0], int64(i*n), n); !bytes.Equal(got, bytes.Repeat([]byte{byte(i)}, n)) {
			t.Errorf("level %d lost", i)
		}
	}
	snaps, err := d.Snapshots(ctx, g)
	if err != nil || len(snaps) != 0 {
		t.Errorf("snapshots left: %v %v", snaps, err)
	}
}

// TestDeleteTreeInterrupted stops an offline merge (qemu-img commit of ~190 MiB) once
// it has written data, by cancelling the delete (SIGTERM) or killing it at the crash
// point: the chain stays valid with every byte of the active view, both deleted
// snapshots are reported partly merged and the kept one not, and the next run (the
// same delete, or any other change to the guest such as an edit) finishes the job, with
// the kept snapshot's view and the active view whole.
func TestDeleteTreeInterrupted(t *testing.T) {
	for _, how := range []string{"cancel", "kill"} {
		t.Run(how, func(t *testing.T) {
			e := newMergeEnv(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 512}, 10*time.Second)
			g := e.guest()
			const big = 192 * mib
			e.write(t, region{400 * mib, mib}, 0x0a)
			e.snap(t, "k")
			e.write(t, region{0, big}, 0x01)
			e.snap(t, "x1")
			e.write(t, region{big, big}, 0x02)
			e.write(t, region{400 * mib, mib}, 0x0b)
			e.snap(t, "x2")
			e.write(t, region{390 * mib, mib}, 0x03)

			ctx, cancel := context.WithCancel(mctx(t))
			defer cancel()
			opts := driver.DeleteOptions{Children: true}
			if how == "cancel" {
				opts.Progress = func(_ string, done, total uint64) {
					if done > 0 && done < total {
						cancel()
					}
				}
			} else {
				e.killAt(t, crash.MergeOfflineCommit, 1)
			}
			at, err := runKilled(func() error { return e.d.DeleteSnapshotTree(ctx, g, "x1", opts) })
			t.Logf("interrupted (%s): %v", at, err)
			switch how {
			case "cancel":
				if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "partly merged") {
					t.Errorf("error %v does not wrap the cancellation or say what is partly merged", err)
				}
			case "kill":
				if at != crash.MergeOfflineCommit {
					t.Fatalf("the merge did not reach %s: %v", crash.MergeOfflineCommit, err)
				}
				libvirt.SetPointHook(t, e.dom.UUID, func(string) {})
			}
			inc := e.incomplete(t)
			if len(inc) != 3 || !strings.Contains(inc["x1"], "partly merged") || !strings.Contains(inc["x2"], "partly merged") || inc["k"] != "" {
				t.Errorf("after the interruption: %v", inc)
			}
			e.checkImage(t, "active view after the interruption", e.dom.Chain(t, "vda")[0], len(e.m.writes))

			e.d = e.open(t)
			if how == "cancel" {
				err = e.d.DeleteSnapshotTree(mctx(t), g, "x1", driver.DeleteOptions{Children: true})
			} else {
				desc := "kept"
				err = e.d.EditSnapshot(mctx(t), g, "k", driver.EditOptions{Description: &desc})
			}
			if err != nil {
				t.Fatalf("the next run: %v", err)
			}
			if n := e.names(t); strings.Join(n, ",") != "k" {
				t.Fatalf("snapshots after the next run: %v", n)
			}
			if ch := e.dom.Chain(t, "vda"); len(ch) != 2 {
				t.Errorf("chain after finishing: %v", ch)
			}
			e.checkAll(t, "after finishing")
		})
	}
}
