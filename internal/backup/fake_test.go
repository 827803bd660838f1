package backup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
)

// fakeDriver is a Backupper whose guests' checkpoints live in memory and whose backups
// write a small file per target (recording the request).
type fakeDriver struct {
	mu       sync.Mutex
	disks    []driver.BackupDisk
	cps      map[string][]driver.Checkpoint // by guest key
	reqs     []driver.BackupRequest
	deleted  []string
	failNext error // the next Backup fails with it after creating its checkpoint
	// onBackup runs inside Backup (after the freeze) with the guest key.
	onBackup func(key string)
	frozen   map[string]bool
	freezes  int
	agentErr error
	// events records freeze/backup/thaw order.
	events []string
}

func newFakeDriver() *fakeDriver {
	return &fakeDriver{
		disks: []driver.BackupDisk{
			{Name: "vda", File: "/img/vda.qcow2", Format: "qcow2", VirtualSize: 1 << 20, Incremental: true},
			{Name: "vdb", File: "/img/vdb.qcow2", Format: "qcow2", VirtualSize: 2 << 20, Incremental: true},
		},
		cps:    map[string][]driver.Checkpoint{},
		frozen: map[string]bool{},
	}
}

func (f *fakeDriver) Name() string                                   { return "fake" }
func (f *fakeDriver) Guests(context.Context) ([]driver.Guest, error) { return nil, nil }
func (f *fakeDriver) Snapshots(context.Context, driver.Guest) ([]driver.Snapshot, error) {
	return nil, nil
}
func (f *fakeDriver) CreateSnapshot(context.Context, driver.Guest, driver.CreateOptions) (driver.Snapshot, error) {
	return driver.Snapshot{}, driver.ErrUnsupported
}
func (f *fakeDriver) DeleteSnapshot(context.Context, driver.Guest, string) error {
	return driver.ErrUnsupported
}
func (f *fakeDriver) RevertSnapshot(context.Context, driver.Guest, string, driver.RevertOptions) error {
	return driver.ErrUnsupported
}
func (f *fakeDriver) Close() error { return nil }

func (f *fakeDriver) AgentPing(context.Context, driver.Guest) error { return f.agentErr }

func (f *fakeDriver) Freeze(_ context.Context, g driver.Guest) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.freezes++
	f.frozen[g.Key()] = true
	f.events = append(f.events, "freeze")
	return 2, nil
}

func (f *fakeDriver) Thaw(_ context.Context, g driver.Guest) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frozen[g.Key()] = false
	f.events = append(f.events, "thaw")
	return 2, nil
}

func (f *fakeDriver) FrozenState(_ context.Context, g driver.Guest) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.frozen[g.Key()], nil
}

func (f *fakeDriver) BackupSource(_ context.Context, g driver.Guest) (driver.BackupSource, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return driver.BackupSource{Disks: slices.Clone(f.disks), Config: []byte("<domain/>"), Checkpoints: slices.Clone(f.cps[g.Key()])}, nil
}

func (f *fakeDriver) Backup(ctx context.Context, g driver.Guest, req driver.BackupRequest) (driver.BackupResult, error) {
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	fail := f.failNext
	f.failNext = nil
	if req.Since != "" && !slices.ContainsFunc(f.cps[g.Key()], func(c driver.Checkpoint) bool { return c.Name == req.Since }) {
		f.mu.Unlock()
		return driver.BackupResult{}, fmt.Errorf("no checkpoint %s", req.Since)
	}
	f.mu.Unlock()
	var thaw func()
	if req.Freeze != nil {
		var err error
		if thaw, err = req.Freeze(ctx); err != nil {
			return driver.BackupResult{}, err
		}
	}
	f.mu.Lock()
	f.events = append(f.events, "start")
	if req.Checkpoint != "" {
		f.cps[g.Key()] = append(f.cps[g.Key()], driver.Checkpoint{Name: req.Checkpoint, Created: time.Now(), Disks: []string{"vda", "vdb"}})
	}
	f.mu.Unlock()
	if thaw != nil {
		thaw()
	}
	if f.onBackup != nil {
		f.onBackup(g.Key())
	}
	res := driver.BackupResult{Instant: time.Now(), Bytes: map[string]uint64{}}
	for _, t := range req.Targets {
		if err := qcow2(t.File, t.Backing, f.size(t.Disk)); err != nil {
			return res, err
		}
		res.Bytes[t.Disk] = 1000
		if req.Progress != nil {
			req.Progress(1000, 1000)
		}
	}
	if fail != nil {
		return res, fail // the checkpoint stays: the engine must remove it
	}
	return res, nil
}

func (f *fakeDriver) size(disk string) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, d := range f.disks {
		if d.Name == disk {
			return d.VirtualSize
		}
	}
	return 0
}

// qcow2 creates an empty qcow2 image, backed by backing (relative to file's directory)
// when given.
func qcow2(file, backing string, size uint64) error {
	args := []string{"create", "-q", "-f", "qcow2"}
	if backing != "" {
		args = append(args, "-b", backing, "-F", "qcow2")
	}
	args = append(args, file, strconv.FormatUint(size, 10))
	cmd := exec.Command("qemu-img", args...)
	cmd.Dir = filepath.Dir(file)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img %v: %w: %s", args, err, out)
	}
	return nil
}

func (f *fakeDriver) DeleteCheckpoint(_ context.Context, g driver.Guest, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	cps := f.cps[g.Key()]
	i := slices.IndexFunc(cps, func(c driver.Checkpoint) bool { return c.Name == name })
	if i < 0 {
		return fmt.Errorf("checkpoint %s: %w", name, driver.ErrNotFound)
	}
	f.cps[g.Key()] = slices.Delete(cps, i, i+1)
	f.deleted = append(f.deleted, name)
	return nil
}

func (f *fakeDriver) checkpoints(g driver.Guest) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n []string
	for _, c := range f.cps[g.Key()] {
		n = append(n, c.Name)
	}
	return n
}

// fakeStore is a repository in a temp dir: points are directories with a file per
// disk; complete points are kept in memory.
type fakeStore struct {
	mu     sync.Mutex
	dir    string
	guests map[string]*fakeGuestStore
}

func newFakeStore(dir string) *fakeStore {
	return &fakeStore{dir: dir, guests: map[string]*fakeGuestStore{}}
}

func (s *fakeStore) Tag() string { return "t3st" }

func (s *fakeStore) Guest(g driver.Guest, _ string) (GuestStore, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	gs := s.guests[g.Key()]
	if gs == nil {
		gs = &fakeGuestStore{dir: filepath.Join(s.dir, g.Name)}
		if err := os.MkdirAll(gs.dir, 0o700); err != nil {
			return nil, err
		}
		s.guests[g.Key()] = gs
	}
	return gs, nil
}

type fakeGuestStore struct {
	mu      sync.Mutex
	dir     string
	points  []Point
	aborted []string
	began   int
}

func (g *fakeGuestStore) Lock(context.Context) (func(), error) { return func() {}, nil }

func (g *fakeGuestStore) Repair(context.Context) ([]string, error) {
	m, _ := filepath.Glob(filepath.Join(g.dir, ".partial-*"))
	var did []string
	for _, p := range m {
		os.RemoveAll(p)
		did = append(did, "removed "+p)
	}
	return did, nil
}

func (g *fakeGuestStore) Points() ([]Point, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	p := slices.Clone(g.points)
	sort.Slice(p, func(i, j int) bool { return p[i].ID < p[j].ID })
	return p, nil
}

func (g *fakeGuestStore) Begin(m Meta) (Pending, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.began++
	dir := filepath.Join(g.dir, ".partial-"+m.ID)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	return &fakePending{g: g, dir: dir, begin: m}, nil
}

type fakePending struct {
	g     *fakeGuestStore
	dir   string
	begin Meta
}

func (p *fakePending) File(disk string) string { return filepath.Join(p.dir, disk+".qcow2") }
func (p *fakePending) Backing(disk string) string {
	if p.begin.Parent == "" {
		return ""
	}
	return "../" + p.begin.Parent + "/" + disk + ".qcow2"
}

func (p *fakePending) Commit(_ context.Context, m Meta) (Point, error) {
	final := filepath.Join(p.g.dir, m.ID)
	if err := os.Rename(p.dir, final); err != nil {
		return Point{}, err
	}
	pt := Point{PointInfo: PointInfo{ID: m.ID, Level: m.Level, Chain: m.Chain, Checkpoint: m.Checkpoint}, Dir: final,
		Started: m.Started, Finished: m.Finished, Files: map[string]string{}, Config: m.Config}
	for _, d := range m.Disks {
		pt.Disks = append(pt.Disks, DiskInfo{Name: d.Name, VirtualSize: d.VirtualSize})
		pt.Files[d.Name] = filepath.Join(final, d.Name+".qcow2")
	}
	p.g.mu.Lock()
	p.g.points = append(p.g.points, pt)
	p.g.mu.Unlock()
	return pt, nil
}

func (p *fakePending) Abort() error {
	p.g.mu.Lock()
	p.g.aborted = append(p.g.aborted, p.begin.ID)
	p.g.mu.Unlock()
	return os.RemoveAll(p.dir)
}

var errInjected = errors.New("injected failure")
