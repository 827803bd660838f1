package repo

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkCommitFull measures what Commit adds to a full backup of a disk holding
// 1 GiB of random data (qemu-img info, XXH3 of the file, fsync, manifest, renames),
// against the copy itself (qemu-img convert of the data into the point's qcow2, as
// a push backup writes it: QEMU flushes a job target when it closes it, hence -t
// writeback). Run: go test -run '^$' -bench CommitFull ./internal/repo
func BenchmarkCommitFull(b *testing.B) {
	dir := b.TempDir()
	src := filepath.Join(dir, "src.raw")
	if out, err := exec.Command("sh", "-c", "head -c 1G /dev/urandom > "+src+" && truncate -s 2G "+src).CombinedOutput(); err != nil {
		b.Fatalf("%v %s", err, out)
	}
	r, err := Open(filepath.Join(dir, "repo"))
	if err != nil {
		b.Fatal(err)
	}
	g, err := r.Guest(GuestID{UUID: "33333333-3333-3333-3333-333333333333", Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	unlock, err := g.Lock(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer unlock()
	var copyT, commitT time.Duration
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < b.N; i++ {
		p, err := g.Begin(Manifest{Level: LevelFull, Started: at.Add(time.Duration(i) * time.Hour), Disks: []DiskManifest{{Name: "vda"}}})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if out, err := exec.Command("qemu-img", "convert", "-t", "writeback", "-f", "raw", "-O", "qcow2", src, p.File("vda")).CombinedOutput(); err != nil {
			b.Fatalf("%v %s", err, out)
		}
		copyT += time.Since(start)
		start = time.Now()
		pt, err := p.Commit(ctx, Manifest{Consistency: "crash"})
		if err != nil {
			b.Fatal(err)
		}
		commitT += time.Since(start)
		os.RemoveAll(pt.Dir)
	}
	b.ReportMetric(copyT.Seconds()/float64(b.N), "copy-s/op")
	b.ReportMetric(commitT.Seconds()/float64(b.N), "commit-s/op")
	b.ReportMetric(float64(copyT+commitT)/float64(copyT), "ratio")
}
