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

	"github.com/autosnap/autosnap/internal/driver"
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

// TestDeleteTreeInterrupted kills an offline merge half-way: the chain must stay valid
// with every byte readable, the untouched snapshots must stay, and a second delete
// must finish the job.
func TestDeleteTreeInterrupted(t *testing.T) {
	d := open(t)
	dom := testbed.Libvirt(t).NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 512})
	g := driver.Guest{Node: d.Node(), Name: dom.Name, UUID: dom.UUID, State: driver.StateShutoff}
	ctx := context.Background()
	const big = 192 << 20
	for i := 1; i <= 2; i++ {
		if _, err := d.CreateSnapshot(ctx, g, driver.CreateOptions{Name: fmt.Sprintf("x%d", i)}); err != nil {
			t.Fatal(err)
		}
		qemuIOWrite(t, dom.Chain(t, "vda")[0], int64(i-1)*big, byte(i), big)
	}
	before := testbed.ImageSum(t, dom.Chain(t, "vda")[0])
	cctx, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
	err := d.DeleteSnapshotTree(cctx, g, "x1", driver.DeleteOptions{Children: true})
	cancel()
	if err == nil {
		t.Skip("the merge finished within 150ms; nothing was interrupted")
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "run the delete again") {
		t.Errorf("error %v does not wrap the deadline or say what to do", err)
	}
	if snaps, _ := d.Snapshots(ctx, g); len(snaps) != 2 {
		t.Errorf("an interrupted delete forgot snapshots: %v", snaps)
	}
	t.Logf("interrupted: %v", err)
	if got := testbed.ImageSum(t, dom.Chain(t, "vda")[0]); got != before {
		t.Fatalf("the guest's data changed after an interrupted merge")
	}
	if err := d.DeleteSnapshotTree(ctx, g, "x1", driver.DeleteOptions{Children: true}); err != nil {
		t.Fatal(err)
	}
	chain := dom.Chain(t, "vda")
	if len(chain) != 1 {
		t.Errorf("chain after finishing: %v", chain)
	}
	if got := testbed.ImageSum(t, chain[0]); got != before {
		t.Errorf("data changed after finishing the delete")
	}
}
