package backup

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
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
	if req.Checkpoint != "" && slices.ContainsFunc(f.cps[g.Key()], func(c driver.Checkpoint) bool { return c.Name == req.Checkpoint }) {
		f.mu.Unlock()
		return driver.BackupResult{}, fmt.Errorf("checkpoint %s: %w", req.Checkpoint, driver.ErrExists)
	}
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

var errInjected = errors.New("injected failure")
