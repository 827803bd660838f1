package libvirt_test

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/driver/libvirt"
	"github.com/autosnap/autosnap/internal/rpctrace"
	"github.com/autosnap/autosnap/internal/testbed"
)

// traced opens a driver whose RPCs pass through an rpctrace proxy.
func traced(t *testing.T) (*libvirt.Driver, *rpctrace.Proxy) {
	t.Helper()
	p, err := rpctrace.Start(filepath.Join(t.TempDir(), "libvirt.sock"), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	d, err := libvirt.Open(context.Background(), driver.Config{Host: p.URI(), Timeout: 20 * time.Second})
	if err != nil {
		t.Fatalf("open libvirt through the proxy: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d, p
}

// TestGuestsReadsNoMetadata: listing guests is one RPC whatever the number of
// guests; tags are read only when asked for, and then the same as before.
func TestGuestsReadsNoMetadata(t *testing.T) {
	d, p := traced(t)
	bed := testbed.Libvirt(t)
	dom := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	bare := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Shutoff, DiskMiB: 8})
	ctx := context.Background()
	g := driver.Guest{Node: d.Node(), Name: dom.Name, UUID: dom.UUID, State: driver.StateShutoff}
	if err := d.SetTags(ctx, g, []string{"prod", "web"}); err != nil {
		t.Fatal(err)
	}
	p.Reset()
	gs, err := d.Guests(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := p.Calls("DomainGetMetadata"); n != 0 {
		t.Errorf("Guests made %d DomainGetMetadata calls for %d guests, want 0", n, len(gs))
	}
	if n := p.Total(); n != 1 {
		t.Errorf("Guests made %d RPCs, want 1:\n%s", n, rpctrace.Format(p.Stats(), 0))
	}
	var mine []driver.Guest
	for _, x := range gs {
		if x.UUID == dom.UUID || x.UUID == bare.UUID {
			mine = append(mine, x)
		}
	}
	if len(mine) != 2 {
		t.Fatalf("Guests listed %d of the 2 test domains", len(mine))
	}
	p.Reset()
	if err := driver.LoadTags(ctx, d, mine); err != nil {
		t.Fatal(err)
	}
	if n := p.Calls("DomainGetMetadata"); n != 2 {
		t.Errorf("LoadTags of 2 guests made %d metadata reads, want 2", n)
	}
	for _, x := range mine {
		want := "[]"
		if x.UUID == dom.UUID {
			want = "[prod web]"
		}
		if x.Tags == nil || fmtTags(x.Tags) != want {
			t.Errorf("%s: tags %#v, want %s", x.Name, x.Tags, want)
		}
	}
	// A guest undefined since the listing has no tags rather than failing the run.
	gone := driver.Guest{Node: d.Node(), Name: "ast-gone", UUID: "00000000-0000-4000-8000-000000000001"}
	gl := []driver.Guest{gone}
	if err := driver.LoadTags(ctx, d, gl); err != nil || gl[0].Tags == nil || len(gl[0].Tags) != 0 {
		t.Errorf("LoadTags of a vanished guest: %v, tags %#v", err, gl[0].Tags)
	}
}

func fmtTags(t []string) string {
	s := "["
	for i, x := range t {
		if i > 0 {
			s += " "
		}
		s += x
	}
	return s + "]"
}

// BenchmarkListFleet lists the snapshots of every guest of a fleet bench/status.sh
// built and left defined (KEEP=1 SIZES=200x20 bash bench/status.sh), as status does:
// 4 guests at a time. Profile autosnap's side of status with -cpuprofile.
func BenchmarkListFleet(b *testing.B) {
	d, err := libvirt.Open(context.Background(), driver.Config{Host: "qemu:///system", Timeout: 30 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	all, err := d.Guests(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	var fleet []driver.Guest
	for _, g := range all {
		if strings.HasPrefix(g.Name, "astbench-st-") {
			fleet = append(fleet, g)
		}
	}
	if len(fleet) == 0 {
		b.Skip("no astbench-st- fleet: build one with KEEP=1 SIZES=200x20 bash bench/status.sh")
	}
	cpu0 := cpuTime()
	for b.Loop() {
		sem := make(chan struct{}, 4)
		var wg sync.WaitGroup
		for _, g := range fleet {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if _, err := d.Snapshots(context.Background(), g); err != nil {
					b.Error(err)
				}
			}()
		}
		wg.Wait()
	}
	b.ReportMetric(float64(len(fleet)), "guests")
	b.ReportMetric(float64((cpuTime()-cpu0).Milliseconds())/float64(b.N), "cpu-ms/op")
}

// cpuTime is the CPU (user+system) this process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
