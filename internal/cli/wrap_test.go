package cli

// Drivers wrapped around the real libvirt driver, to give the commands behaviour the
// real one shows only in rare states (an interrupted merge) or will show (lazy tags).

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
)

// runWrapped runs autosnap like run, with every driver it opens wrapped by wrap.
func runWrapped(t *testing.T, wrap func(driver.Driver) driver.Driver, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	start := time.Now()
	code := execute(context.Background(), args, &out, &errb, func(g *GlobalOptions) {
		g.openDriver = func(ctx context.Context, hosts string, cfg driver.Config) (driver.Driver, error) {
			d, err := driver.Open(ctx, hosts, cfg)
			if err != nil {
				return nil, err
			}
			return wrap(d), nil
		}
	})
	r := result{out.String(), errb.String(), code, time.Since(start)}
	t.Logf("autosnap (wrapped) %s → %d (%s)\n%s%s", strings.Join(args, " "), code, r.took.Round(time.Millisecond), r.stdout, r.stderr)
	return r
}

// lazyTags is a driver whose Guests leaves Tags nil and reads them only in LoadTags,
// as libvirt's does once tags are read lazily.
type lazyTags struct {
	driver.Driver
	loads  *atomic.Int32 // LoadTags calls
	loaded *atomic.Int32 // guests whose tags were loaded
}

func (l lazyTags) Guests(ctx context.Context) ([]driver.Guest, error) {
	gs, err := l.Driver.Guests(ctx)
	for i := range gs {
		gs[i].Tags = nil
	}
	return gs, err
}

func (l lazyTags) LoadTags(ctx context.Context, guests []driver.Guest) error {
	l.loads.Add(1)
	// The wrapped driver may read tags lazily itself (libvirt does).
	all, err := l.Driver.Guests(ctx)
	if err == nil {
		err = driver.LoadTags(ctx, l.Driver, all)
	}
	if err != nil {
		return err
	}
	byKey := map[string][]string{}
	for _, g := range all {
		byKey[g.Key()] = g.Tags
	}
	for i := range guests {
		guests[i].Tags = byKey[guests[i].Key()]
		l.loaded.Add(1)
	}
	return nil
}

func (l lazyTags) SetTags(ctx context.Context, g driver.Guest, tags []string) error {
	return l.Driver.(driver.Tagger).SetTags(ctx, g, tags)
}

// damaged reports the named snapshots as Incomplete with the given reasons, and passes
// everything else, reverts included, to the real driver: the command alone must refuse.
type damaged struct {
	driver.Driver
	reasons map[string]string
}

func (d damaged) Snapshots(ctx context.Context, g driver.Guest) ([]driver.Snapshot, error) {
	snaps, err := d.Driver.Snapshots(ctx, g)
	for i := range snaps {
		snaps[i].Incomplete = d.reasons[snaps[i].Name]
	}
	return snaps, err
}

// refusing refuses every revert as a driver does that finds a snapshot's data not
// whole only when it reverts.
type refusing struct {
	driver.Driver
	err error
}

func (r refusing) RevertSnapshot(context.Context, driver.Guest, string, driver.RevertOptions) error {
	return r.err
}

// noting adds notes to every snapshot it creates.
type noting struct {
	driver.Driver
	notes []string
}

func (n noting) CreateSnapshot(ctx context.Context, g driver.Guest, opts driver.CreateOptions) (driver.Snapshot, error) {
	s, err := n.Driver.CreateSnapshot(ctx, g, opts)
	if err == nil {
		s.Notes = append(s.Notes, n.notes...)
	}
	return s, err
}

// collapseRecorder records the options of CollapseChain and passes the call on.
type collapseRecorder struct {
	driver.Driver
	mu   *sync.Mutex
	opts *[]driver.CollapseOptions
}

func (c collapseRecorder) CollapseChain(ctx context.Context, g driver.Guest, opts driver.CollapseOptions) error {
	c.mu.Lock()
	*c.opts = append(*c.opts, opts)
	c.mu.Unlock()
	return c.Driver.(driver.ChainCollapser).CollapseChain(ctx, g, opts)
}
