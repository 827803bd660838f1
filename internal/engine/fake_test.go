package engine

// A fake hypervisor for the engine's tests: guests and their snapshots live in memory,
// every call is recorded in order (optionally into a file the test's hook scripts
// append to as well), and failures are injected per guest or per snapshot. Each disk
// chain has one overlay per snapshot, as libvirt's external snapshots do.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/naming"
)

type fakeDriver struct {
	mu     sync.Mutex
	guests []driver.Guest
	snaps  map[string][]driver.Snapshot // by guest name, oldest first
	events []string
	// eventFile, when set, receives every event as a line (O_APPEND), so hook scripts
	// writing to the same file interleave with the driver calls in order.
	eventFile string
	clock     func() time.Time

	failCreate  map[string]error // by guest name
	failDelete  map[string]error // by snapshot name
	failPrepare map[string]error // by guest name
	failList    map[string]error // by guest name
	agent       map[string]bool  // guest agent answers
	frozen      map[string]bool
	storage     map[string]float64 // percent full, by guest name
	notes       []string           // returned with every created snapshot
	stall       bool               // StallBounded
	incomplete  map[string]string  // by snapshot name
	// createHook runs inside CreateSnapshot / PreparedSnapshot.Create.
	createHook func(g driver.Guest)
	// deleteCtx records, per delete, whether its context had a deadline.
	deleteHadDeadline []bool
}

func newFake(guests ...driver.Guest) *fakeDriver {
	return &fakeDriver{
		guests: guests, snaps: map[string][]driver.Snapshot{},
		failCreate: map[string]error{}, failDelete: map[string]error{}, failPrepare: map[string]error{},
		failList: map[string]error{}, agent: map[string]bool{}, frozen: map[string]bool{},
		storage: map[string]float64{}, incomplete: map[string]string{},
	}
}

func running(name string) driver.Guest {
	return driver.Guest{Node: "h1", Name: name, UUID: "uuid-" + name, State: driver.StateRunning, Kind: driver.KindQEMU, Tags: []string{}}
}

func withState(g driver.Guest, s driver.State) driver.Guest { g.State = s; return g }

func (f *fakeDriver) record(format string, a ...any) {
	e := fmt.Sprintf(format, a...)
	f.events = append(f.events, e)
	if f.eventFile != "" {
		fh, err := os.OpenFile(f.eventFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err == nil {
			fmt.Fprintln(fh, e)
			fh.Close()
		}
	}
}

// Events returns the recorded calls, optionally only those starting with one of prefixes.
func (f *fakeDriver) Events(prefixes ...string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, e := range f.events {
		if len(prefixes) == 0 || slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(e, p) }) {
			out = append(out, e)
		}
	}
	return out
}

// addSnap adds an existing snapshot as autosnap (marker) or another tool made it.
func (f *fakeDriver) addSnap(guest, name, desc string, created time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.snaps[guest] = append(f.snaps[guest], driver.Snapshot{Name: name, Description: desc, Created: created, Location: driver.LocationExternal})
}

func (f *fakeDriver) names(guest string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, s := range f.snaps[guest] {
		out = append(out, s.Name)
	}
	return out
}

func (f *fakeDriver) snap(guest, name string) (driver.Snapshot, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.snaps[guest] {
		if s.Name == name {
			return s, true
		}
	}
	return driver.Snapshot{}, false
}

func (f *fakeDriver) now() time.Time {
	if f.clock != nil {
		return f.clock()
	}
	return time.Now()
}

func (f *fakeDriver) Name() string { return "fake" }
func (f *fakeDriver) Close() error { return nil }

func (f *fakeDriver) Guests(ctx context.Context) ([]driver.Guest, error) {
	return slices.Clone(f.guests), nil
}

func (f *fakeDriver) Snapshots(ctx context.Context, g driver.Guest) ([]driver.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("list %s", g.Name)
	if err := f.failList[g.Name]; err != nil {
		return nil, err
	}
	out := slices.Clone(f.snaps[g.Name])
	for i := range out {
		out[i].Incomplete = f.incomplete[out[i].Name]
	}
	return out, nil
}

func (f *fakeDriver) create(ctx context.Context, g driver.Guest, opts driver.CreateOptions) (driver.Snapshot, error) {
	if f.createHook != nil {
		f.createHook(g)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("create %s %s quiesce=%v memory=%v frozen=%v", g.Name, opts.Name, opts.Quiesce, opts.Memory, f.frozen[g.Name])
	if err := ctx.Err(); err != nil {
		return driver.Snapshot{}, err
	}
	if err := f.failCreate[g.Name]; err != nil {
		return driver.Snapshot{}, fmt.Errorf("guest %s: creating snapshot %s failed: %w", g.Name, opts.Name, err)
	}
	for _, s := range f.snaps[g.Name] {
		if s.Name == opts.Name {
			return driver.Snapshot{}, fmt.Errorf("guest %s: creating snapshot %s failed: external snapshot file for disk vda already exists: %w", g.Name, opts.Name, driver.ErrExists)
		}
	}
	s := driver.Snapshot{
		Name: opts.Name, Description: opts.Description, Created: f.now().Truncate(time.Second),
		Memory: opts.Memory && g.State.Active(), Location: driver.LocationExternal,
		Consistency: driver.Consistency(naming.DescriptionFields(opts.Description)["consistency"]),
	}
	f.snaps[g.Name] = append(f.snaps[g.Name], s)
	s.Notes = slices.Clone(f.notes)
	return s, nil
}

func (f *fakeDriver) CreateSnapshot(ctx context.Context, g driver.Guest, opts driver.CreateOptions) (driver.Snapshot, error) {
	return f.create(ctx, g, opts)
}

func (f *fakeDriver) DeleteSnapshot(ctx context.Context, g driver.Guest, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, has := ctx.Deadline()
	f.deleteHadDeadline = append(f.deleteHadDeadline, has)
	f.record("delete %s %s", g.Name, name)
	if err := f.failDelete[name]; err != nil {
		return fmt.Errorf("guest %s: deleting snapshot %s: %w", g.Name, name, err)
	}
	ss := f.snaps[g.Name]
	for i, s := range ss {
		if s.Name == name {
			f.snaps[g.Name] = slices.Delete(ss, i, i+1)
			delete(f.incomplete, name)
			return nil
		}
	}
	return fmt.Errorf("guest %s has no snapshot %q: %w", g.Name, name, driver.ErrNotFound)
}

func (f *fakeDriver) RevertSnapshot(ctx context.Context, g driver.Guest, name string, opts driver.RevertOptions) error {
	return driver.ErrUnsupported
}

func (f *fakeDriver) AgentPing(ctx context.Context, g driver.Guest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.agent[g.Name] {
		return fmt.Errorf("guest %s: agent does not answer: %w", g.Name, driver.ErrAgent)
	}
	return nil
}

func (f *fakeDriver) Freeze(ctx context.Context, g driver.Guest) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("freeze %s", g.Name)
	if !f.agent[g.Name] {
		return 0, driver.ErrAgent
	}
	f.frozen[g.Name] = true
	return 1, nil
}

func (f *fakeDriver) Thaw(ctx context.Context, g driver.Guest) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("thaw %s", g.Name)
	f.frozen[g.Name] = false
	return 1, nil
}

func (f *fakeDriver) FrozenState(ctx context.Context, g driver.Guest) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.frozen[g.Name], nil
}

func (f *fakeDriver) Storage(ctx context.Context, g driver.Guest) ([]driver.StorageUsage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.storage[g.Name]
	return []driver.StorageUsage{{Name: "pool", Capacity: 100, Used: uint64(p), Percent: p}}, nil
}

// Chains: one overlay per snapshot on the single disk vda.
func (f *fakeDriver) Chains(ctx context.Context, g driver.Guest) ([]driver.ChainInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	images := []string{"base.qcow2"}
	for _, s := range f.snaps[g.Name] {
		images = append([]string{"vda." + s.Name}, images...)
	}
	return []driver.ChainInfo{{Disk: "vda", Images: images}}, nil
}

func (f *fakeDriver) StallBounded() bool { return f.stall }

func (f *fakeDriver) PrepareSnapshot(ctx context.Context, g driver.Guest, opts driver.CreateOptions) (driver.PreparedSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if opts.DryRun {
		f.record("prepare-dry %s %s", g.Name, opts.Name)
	} else {
		f.record("prepare %s %s", g.Name, opts.Name)
	}
	if err := f.failPrepare[g.Name]; err != nil {
		return nil, fmt.Errorf("guest %s: preparing snapshot %s: %w", g.Name, opts.Name, err)
	}
	for _, s := range f.snaps[g.Name] {
		if s.Name == opts.Name {
			return nil, fmt.Errorf("guest %s: snapshot %s: %w", g.Name, opts.Name, driver.ErrExists)
		}
	}
	return &fakePrepared{f: f, g: g, opts: opts}, nil
}

type fakePrepared struct {
	f    *fakeDriver
	g    driver.Guest
	opts driver.CreateOptions
}

func (p *fakePrepared) Create(ctx context.Context) (driver.Snapshot, error) {
	return p.f.create(ctx, p.g, p.opts)
}

func (p *fakePrepared) Close() {
	p.f.mu.Lock()
	defer p.f.mu.Unlock()
	p.f.record("close %s %s", p.g.Name, p.opts.Name)
}

// coreOnly hides every optional capability of a fake: the bare driver.Driver.
type coreOnly struct{ f *fakeDriver }

func (c coreOnly) Name() string                                       { return "fake-core" }
func (c coreOnly) Close() error                                       { return nil }
func (c coreOnly) Guests(ctx context.Context) ([]driver.Guest, error) { return c.f.Guests(ctx) }
func (c coreOnly) Snapshots(ctx context.Context, g driver.Guest) ([]driver.Snapshot, error) {
	return c.f.Snapshots(ctx, g)
}
func (c coreOnly) CreateSnapshot(ctx context.Context, g driver.Guest, o driver.CreateOptions) (driver.Snapshot, error) {
	return c.f.CreateSnapshot(ctx, g, o)
}
func (c coreOnly) DeleteSnapshot(ctx context.Context, g driver.Guest, name string) error {
	return c.f.DeleteSnapshot(ctx, g, name)
}
func (c coreOnly) RevertSnapshot(ctx context.Context, g driver.Guest, name string, o driver.RevertOptions) error {
	return c.f.RevertSnapshot(ctx, g, name, o)
}

// quiescerOnly is a driver that can freeze but cannot prepare a snapshot.
type quiescerOnly struct {
	coreOnly
}

func (q quiescerOnly) AgentPing(ctx context.Context, g driver.Guest) error {
	return q.f.AgentPing(ctx, g)
}
func (q quiescerOnly) Freeze(ctx context.Context, g driver.Guest) (int, error) {
	return q.f.Freeze(ctx, g)
}
func (q quiescerOnly) Thaw(ctx context.Context, g driver.Guest) (int, error) { return q.f.Thaw(ctx, g) }
func (q quiescerOnly) FrozenState(ctx context.Context, g driver.Guest) (bool, error) {
	return q.f.FrozenState(ctx, g)
}

var (
	_ driver.Driver           = (*fakeDriver)(nil)
	_ driver.AgentPinger      = (*fakeDriver)(nil)
	_ driver.Quiescer         = (*fakeDriver)(nil)
	_ driver.StorageReporter  = (*fakeDriver)(nil)
	_ driver.ChainReporter    = (*fakeDriver)(nil)
	_ driver.StallBounded     = (*fakeDriver)(nil)
	_ driver.SnapshotPreparer = (*fakeDriver)(nil)
	_ driver.Driver           = coreOnly{}
	_ driver.Quiescer         = quiescerOnly{}
)

// testClock starts at a fixed time and advances one second per reading, so every run
// of a job gets its own snapshot name with a second-resolution format.
type testClock struct {
	mu  sync.Mutex
	t   time.Time
	inc time.Duration
}

func newClock() *testClock {
	return &testClock{t: time.Date(2026, 9, 29, 2, 0, 0, 0, time.UTC), inc: time.Second}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.t
	c.t = c.t.Add(c.inc)
	return t
}

var errInjected = errors.New("injected failure")

func mustFormat(t testing.TB, s string) naming.Format {
	t.Helper()
	f, err := naming.ParseFormat(s)
	if err != nil {
		t.Fatal(err)
	}
	return f
}
