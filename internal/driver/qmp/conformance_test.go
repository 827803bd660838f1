package qmp_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/driver/drivertest"
	qmpdrv "github.com/autosnap/autosnap/internal/driver/qmp"
	"github.com/autosnap/autosnap/internal/testbed"
)

// fixture runs the conformance suite on standalone QEMU processes whose sockets are
// linked into one host directory per driver (two for the fleet).
type fixture struct {
	mu    sync.Mutex
	d     driver.Driver
	hosts []*testbed.QMPHost
	next  int
	qs    map[string]*testbed.QEMU // by guest name
}

func (f *fixture) Driver(t *testing.T) driver.Driver { return f.d }

func (f *fixture) host() *testbed.QMPHost {
	f.mu.Lock()
	defer f.mu.Unlock()
	h := f.hosts[f.next%len(f.hosts)]
	f.next++
	return h
}

func (f *fixture) NewGuest(t *testing.T, st driver.State, disks int) driver.Guest {
	h := f.host()
	q := h.Add(t, testbed.QEMUSpec{Disks: disks, DiskMiB: 16})
	if st == driver.StateRunning {
		q.QMP(t, `{"execute":"cont"}`)
	}
	g := f.add(t, h, q)
	if st == driver.StateShutoff {
		// The driver has seen it running (and recorded its images); now it stops.
		q.Stop(t)
		g.State = driver.StateShutoff
	}
	return g
}

func (f *fixture) NewAgentGuest(t *testing.T) driver.Guest {
	h := f.host()
	return f.add(t, h, h.Add(t, testbed.QEMUSpec{Guest: true, DiskMiB: 32}))
}

func (f *fixture) add(t *testing.T, h *testbed.QMPHost, q *testbed.QEMU) driver.Guest {
	t.Helper()
	f.mu.Lock()
	f.qs[q.Name] = q
	f.mu.Unlock()
	gs, err := f.d.Guests(context.Background())
	if err != nil {
		t.Fatalf("Guests: %v", err)
	}
	for _, g := range gs {
		if g.Name == q.Name && g.Node == h.Dir {
			return g
		}
	}
	t.Fatalf("the driver does not list %s on %s", q.Name, h.Dir)
	return driver.Guest{}
}

func (f *fixture) q(t *testing.T, g driver.Guest) *testbed.QEMU {
	f.mu.Lock()
	defer f.mu.Unlock()
	q, ok := f.qs[g.Name]
	if !ok {
		t.Fatalf("unknown guest %s", g.Name)
	}
	return q
}

func (f *fixture) Write(t *testing.T, g driver.Guest, disk int, off int64, pattern byte, n int) {
	f.q(t, g).WriteDisk(t, disk, off, pattern, n)
}

func (f *fixture) Read(t *testing.T, g driver.Guest, disk int, off int64, n int) []byte {
	return testbed.ReadImage(t, f.q(t, g).Disks[disk].Path, off, n)
}

// ChainLen is -1: internal snapshots add no images.
func (f *fixture) ChainLen(t *testing.T, g driver.Guest, disk int) int { return -1 }

func openHost(t *testing.T, uri string) driver.Driver {
	t.Helper()
	d, err := driver.Open(context.Background(), uri, driver.Config{Timeout: 20 * time.Second})
	if err != nil {
		t.Fatalf("open %s: %v", uri, err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestConformance(t *testing.T) {
	h := testbed.NewQMPHost(t)
	d := openHost(t, h.URI())
	if _, ok := d.(*qmpdrv.Driver); !ok {
		t.Fatalf("--host %s opened a %T, want the qmp driver", h.URI(), d)
	}
	drivertest.Run(t, &fixture{d: d, hosts: []*testbed.QMPHost{h}, qs: map[string]*testbed.QEMU{}})
}

type fleetFixture struct {
	*fixture
	inner driver.Driver
}

func (f *fleetFixture) Inner(t *testing.T) driver.Driver { return f.inner }

// TestFleetConformance runs the suite on two host directories given as one --host.
func TestFleetConformance(t *testing.T) {
	a, b := testbed.NewQMPHost(t), testbed.NewQMPHost(t)
	d := openHost(t, a.URI()+","+b.URI())
	if _, ok := d.(*driver.Fleet); !ok {
		t.Fatalf("two qmp:// entries opened a %T, want a *driver.Fleet", d)
	}
	drivertest.Run(t, &fleetFixture{fixture: &fixture{d: d, hosts: []*testbed.QMPHost{a, b}, qs: map[string]*testbed.QEMU{}}, inner: openHost(t, a.URI())})
}
