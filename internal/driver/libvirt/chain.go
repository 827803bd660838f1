package libvirt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/crash"
	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/retry"
)

// Chains implements driver.ChainReporter.
func (d *Driver) Chains(ctx context.Context, g driver.Guest) ([]driver.ChainInfo, error) {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return nil, err
	}
	x, active, err := d.currentXML(ctx, dom)
	if err != nil {
		return nil, err
	}
	chains, err := d.chainsOf(ctx, x, active)
	if err != nil {
		return nil, fmt.Errorf("guest %s: %w", g.Name, err)
	}
	var out []driver.ChainInfo
	for _, dk := range x.Devices.Disks {
		if dk.Target != nil {
			if c, ok := chains[dk.Target.Dev]; ok {
				out = append(out, driver.ChainInfo{Disk: dk.Target.Dev, Images: c})
			}
		}
	}
	return out, nil
}

// chains returns each disk's backing chain, active image first, and whether the
// domain is active.
func (d *Driver) chains(ctx context.Context, dom golibvirt.Domain) (map[string][]string, bool, error) {
	x, active, err := d.currentXML(ctx, dom)
	if err != nil {
		return nil, false, err
	}
	c, err := d.chainsOf(ctx, x, active)
	return c, active, err
}

func (d *Driver) chainsOf(ctx context.Context, x *libvirtxml.Domain, active bool) (map[string][]string, error) {
	out := map[string][]string{}
	if x.Devices == nil {
		return out, nil
	}
	for _, dk := range x.Devices.Disks {
		if dk.Target == nil || dk.Source == nil {
			continue
		}
		top := sourcePath(dk.Source)
		if top == "" {
			continue
		}
		chain := []string{top}
		// The live definition carries the chain libvirt detected; the persistent one
		// of a shut-off guest does not, so ask qemu-img there.
		if active || dk.BackingStore != nil {
			for b := dk.BackingStore; b != nil && b.Source != nil; b = b.BackingStore {
				if p := sourcePath(b.Source); p != "" {
					chain = append(chain, p)
				}
			}
		} else if dk.Device != "cdrom" && dk.Device != "floppy" {
			if !d.local {
				return nil, fmt.Errorf("disk %s: the backing chain of a shut-off guest can only be read when autosnap runs on the guest's host (connect with qemu:///system there)", dk.Target.Dev)
			}
			c, err := imageChain(ctx, top)
			if err != nil {
				return nil, fmt.Errorf("disk %s: %w", dk.Target.Dev, err)
			}
			chain = c
		}
		out[dk.Target.Dev] = chain
	}
	return out, nil
}

func sourcePath(s *libvirtxml.DomainDiskSource) string {
	switch {
	case s.File != nil:
		return s.File.File
	case s.Block != nil:
		return s.Block.Dev
	}
	return ""
}

type imageInfo struct {
	Filename        string `json:"filename"`
	Format          string `json:"format"`
	BackingFilename string `json:"full-backing-filename"`
}

// imageChain reads an image's backing chain with qemu-img (which libvirt itself uses for
// shut-off guests). -U lets it read images another process holds open.
func imageChain(ctx context.Context, path string) ([]string, error) {
	infos, err := qemuImgInfo(ctx, path)
	if err != nil {
		return nil, err
	}
	var chain []string
	for _, i := range infos {
		chain = append(chain, i.Filename)
	}
	return chain, nil
}

func qemuImgInfo(ctx context.Context, path string) ([]imageInfo, error) {
	out, err := runCmd(ctx, "qemu-img", "info", "--backing-chain", "-U", "--output=json", path)
	if err != nil {
		return nil, err
	}
	var infos []imageInfo
	if err := json.Unmarshal(out, &infos); err != nil {
		return nil, fmt.Errorf("qemu-img info %s: unreadable output: %w", path, err)
	}
	return infos, nil
}

func runCmd(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return nil, fmt.Errorf("%s is not installed (Debian: apt-get install qemu-utils): %w", name, err)
		}
		return nil, fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// commitLive merges top (and the images between) into base on a running or paused
// guest with a libvirt block commit: an active commit with a pivot when top is the
// disk's active image, a plain commit otherwise. With deleteFiles libvirt deletes the
// merged images once the merge succeeded. With adopt the commit is already running (an
// earlier run started it and was cut off; libvirt keeps such jobs): commitLive waits
// for it and pivots it when it is an active commit that is ready. progress, if not
// nil, gets the job's cur/end; mark is called at the crash points.
//
// The merge is given up only when the job's position has not advanced for the
// connection timeout, or when ctx ends; each call to libvirt is bounded by the timeout.
// Giving up aborts the job, which leaves a valid chain (top still overlays base). A job
// found finished when it is aborted (or when a pivot fails) is a success: the chain,
// not the error, tells.
func (d *Driver) commitLive(ctx context.Context, dom golibvirt.Domain, disk, top, base string, activeTop, deleteFiles, adopt bool, progress driver.ProgressFunc, mark func(string)) error {
	abort := func(cause error) error { return d.abortCommit(ctx, dom, disk, top, cause) }
	wake, stop := d.watchJobs(dom)
	defer stop()
	if !adopt {
		var flags golibvirt.DomainBlockCommitFlags
		if deleteFiles {
			flags |= golibvirt.DomainBlockCommitDelete
		}
		if activeTop {
			flags |= golibvirt.DomainBlockCommitActive
		}
		rctx, cancel := d.rpcCtx(ctx)
		err := call0(rctx, func() error {
			return d.l.DomainBlockCommit(dom, disk, golibvirt.OptString{base}, golibvirt.OptString{top}, crash.CommitBandwidth(), flags)
		})
		cancel()
		if err != nil {
			if rctx.Err() == nil {
				return fmt.Errorf("starting block commit of %s into %s: %w", top, base, err)
			}
			// We stopped waiting for the call, but libvirt may have started the job.
			return abort(fmt.Errorf("starting block commit of %s into %s: %w", top, base, err))
		}
		mark(crash.MergeCommitStarted)
	}
	watch := stallWatch{limit: d.timeout}
	pivoted := false
	polls := 0 // small merges finish in milliseconds; long ones are looked at less often
	for {
		j, err := d.jobInfo(ctx, dom, disk)
		if err != nil {
			return abort(fmt.Errorf("watching block commit of %s: %w", top, err))
		}
		if !j.found {
			break
		}
		if progress != nil && j.end > 0 {
			progress(disk, j.cur, j.end)
		}
		if watch.observe(j.cur, time.Now()) {
			return abort(fmt.Errorf("block commit of %s into %s made %w for %s (%d of %d bytes copied)", top, base, errStalled, d.timeout, j.cur, j.end))
		}
		// cur == end can come before QEMU declares the job ready; the pivot is only
		// allowed once the live definition shows <mirror ready='yes'>.
		active := activeTop || j.typ == golibvirt.DomainBlockJobTypeActiveCommit
		if active && !pivoted && j.end > 0 && j.cur == j.end && d.mirrorReady(ctx, dom, disk) {
			mark(crash.MergeCommitReady)
			rctx, cancel := d.rpcCtx(ctx)
			err := call0(rctx, func() error { return d.l.DomainBlockJobAbort(dom, disk, golibvirt.DomainBlockJobAbortPivot) })
			cancel()
			if err != nil {
				return abort(fmt.Errorf("pivoting %s to %s: %w", disk, base, err))
			}
			pivoted = true
			watch.reset(time.Now())
			polls = 0
			continue
		}
		if jobPause(ctx, wake, polls) != nil {
			return abort(fmt.Errorf("block commit of %s interrupted: %w", top, ctx.Err()))
		}
		polls++
	}
	// A job that vanished may have failed: the chain tells.
	rctx, cancel := d.rpcCtx(context.WithoutCancel(ctx))
	defer cancel()
	chains, _, err := d.chains(rctx, dom)
	if err != nil {
		return err
	}
	if indexOf(chains[disk], top) >= 0 {
		return fmt.Errorf("block commit of %s into %s ended but %s is still in the chain %v (see the QEMU log of %s)", top, base, top, chains[disk], dom.Name)
	}
	return nil
}

// abortCommit aborts the block job on disk after cause and tells what became of the
// merge: nil when the job had completed (top left the chain) whatever the abort
// answered ("no job", or QEMU's "in state 'concluded' cannot accept 'cancel'"), cause
// with what happened otherwise. It works on after ctx ended, each call bounded by the
// timeout.
func (d *Driver) abortCommit(ctx context.Context, dom golibvirt.Domain, disk, top string, cause error) error {
	bctx := context.WithoutCancel(ctx)
	rctx, cancel := d.rpcCtx(bctx)
	aerr := call0(rctx, func() error { return d.l.DomainBlockJobAbort(dom, disk, 0) })
	cancel()
	// The abort is asynchronous: wait until the job is gone, then check the chain.
	wctx, wcancel := context.WithTimeout(bctx, max(d.timeout, time.Second))
	defer wcancel()
	running := true
	var jerr error
	for polls := 0; wctx.Err() == nil; polls++ {
		var j blockJob
		if j, jerr = d.jobInfo(bctx, dom, disk); jerr != nil {
			break // libvirt cannot be asked (e.g. it restarted): the next run looks again
		}
		if !j.found {
			running = false
			break
		}
		_ = retry.Sleep(wctx, retry.Poll.Delay(polls))
	}
	switch {
	case jerr != nil:
		return fmt.Errorf("%w; aborting the block job: %v; whether it still runs could not be checked: %v (check with: virsh blockjob %s %s)", cause, aerr, jerr, dom.Name, disk)
	case running:
		return fmt.Errorf("%w; aborting the block job failed (%v) and it still runs (check with: virsh blockjob %s %s)", cause, aerr, dom.Name, disk)
	}
	rctx, cancel = d.rpcCtx(bctx)
	defer cancel()
	chains, _, cerr := d.chains(rctx, dom)
	switch {
	case cerr != nil:
		return fmt.Errorf("%w; the merge was aborted but the chain could not be read back: %v", cause, cerr)
	case indexOf(chains[disk], top) >= 0:
		return fmt.Errorf("%w; the merge was aborted and the disk chain is unchanged", cause)
	}
	// The merge completed before the abort reached it: that is a success, and the
	// caller must record it as one, or the snapshot metadata would keep naming a file
	// libvirt deleted.
	return nil
}

// blockJob is what libvirt reports of the block job on a disk.
type blockJob struct {
	found    bool
	typ      golibvirt.DomainBlockJobType
	cur, end uint64
}

func (d *Driver) jobInfo(ctx context.Context, dom golibvirt.Domain, disk string) (blockJob, error) {
	rctx, cancel := d.rpcCtx(ctx)
	defer cancel()
	return call(rctx, func() (blockJob, error) {
		f, typ, _, c, e, err := d.l.DomainGetBlockJobInfo(dom, disk, 0)
		return blockJob{f == 1, golibvirt.DomainBlockJobType(typ), c, e}, err
	})
}

// mirrorReady reports whether disk's two-phase block job is ready to pivot.
func (d *Driver) mirrorReady(ctx context.Context, dom golibvirt.Domain, disk string) bool {
	rctx, cancel := d.rpcCtx(ctx)
	defer cancel()
	x, err := d.domainXML(rctx, dom, false)
	if err != nil || x.Devices == nil {
		return false
	}
	for _, dk := range x.Devices.Disks {
		if dk.Target != nil && dk.Target.Dev == disk {
			return dk.Mirror != nil && dk.Mirror.Ready == "yes"
		}
	}
	return false
}

// repointDisk changes a shut-off guest's persistent definition so disk uses image.
func (d *Driver) repointDisk(ctx context.Context, dom golibvirt.Domain, disk, image, format string) error {
	x, err := d.domainXML(ctx, dom, true)
	if err != nil {
		return err
	}
	found := false
	for i := range x.Devices.Disks {
		dk := &x.Devices.Disks[i]
		if dk.Target == nil || dk.Target.Dev != disk || dk.Source == nil {
			continue
		}
		switch {
		case dk.Source.File != nil:
			dk.Source.File.File = image
		case dk.Source.Block != nil:
			dk.Source.Block.Dev = image
		}
		if dk.Driver == nil {
			dk.Driver = &libvirtxml.DomainDiskDriver{}
		}
		dk.Driver.Type = format
		dk.BackingStore = nil
		found = true
	}
	if !found {
		return fmt.Errorf("disk %s vanished from the definition of %s", disk, dom.Name)
	}
	out, err := x.Marshal()
	if err != nil {
		return err
	}
	_, err = call(ctx, func() (golibvirt.Domain, error) { return d.l.DomainDefineXML(out) })
	if err != nil {
		return fmt.Errorf("updating the definition of %s to use %s: %w", dom.Name, image, err)
	}
	return nil
}

func (d *Driver) exists(path string) bool {
	if !d.local {
		return true // cannot tell: assume it is there and let the caller refuse
	}
	_, err := os.Stat(path)
	return err == nil
}

// errRemoteMissing marks a file on a remote host that no storage pool knows: it is
// either gone or outside every pool, which libvirt cannot tell apart.
var errRemoteMissing = errors.New("not in any libvirt storage pool")

// removeFile deletes an image or memory file autosnap created; a file that does not
// exist is not an error (callers decide whether its absence is explained). On a remote
// host the file is deleted through its storage volume.
func (d *Driver) removeFile(path string) error {
	if !d.local {
		return d.removeRemote(path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// removeRemote deletes a file on the libvirt host through its storage volume, which
// works when the file sits in a storage pool.
func (d *Driver) removeRemote(path string) error {
	ctx, cancel := d.rpcCtx(context.Background())
	defer cancel()
	vol, err := call(ctx, func() (golibvirt.StorageVol, error) { return d.l.StorageVolLookupByPath(path) })
	if err != nil {
		if errCode(err) == golibvirt.ErrNoStorageVol {
			return fmt.Errorf("cannot delete %s on %s: it is gone or %w (if it exists, delete it by hand)", path, d.node, errRemoteMissing)
		}
		return fmt.Errorf("cannot delete %s on %s: %w", path, d.node, err)
	}
	return call0(ctx, func() error { return d.l.StorageVolDelete(vol, 0) })
}

// Storage implements driver.StorageReporter: the storage pool of each disk image, or
// the filesystem holding it when it is in no pool and autosnap runs on the host.
func (d *Driver) Storage(ctx context.Context, g driver.Guest) ([]driver.StorageUsage, error) {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return nil, err
	}
	x, _, err := d.currentXML(ctx, dom)
	if err != nil {
		return nil, err
	}
	disks, err := snapshotDisks(g, x, nil)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []driver.StorageUsage
	for _, dk := range disks {
		u, err := d.storageOf(ctx, dk.active)
		if err != nil {
			return nil, fmt.Errorf("guest %s: disk %s: %w", g.Name, dk.target, err)
		}
		if !seen[u.Name] {
			seen[u.Name] = true
			out = append(out, u)
		}
	}
	return out, nil
}

func (d *Driver) storageOf(ctx context.Context, path string) (driver.StorageUsage, error) {
	type poolInfo struct {
		name          string
		capacity, use uint64
	}
	pi, err := call(ctx, func() (poolInfo, error) {
		vol, err := d.l.StorageVolLookupByPath(path)
		if err != nil {
			return poolInfo{}, err
		}
		pool, err := d.l.StoragePoolLookupByVolume(vol)
		if err != nil {
			return poolInfo{}, err
		}
		_, c, a, _, err := d.l.StoragePoolGetInfo(pool)
		return poolInfo{"pool:" + pool.Name, c, a}, err
	})
	if err == nil && pi.capacity > 0 {
		return driver.StorageUsage{Name: pi.name, Capacity: pi.capacity, Used: pi.use, Percent: 100 * float64(pi.use) / float64(pi.capacity)}, nil
	}
	if ctx.Err() != nil {
		return driver.StorageUsage{}, ctx.Err()
	}
	if !d.local {
		return driver.StorageUsage{Name: path}, nil // unknown: not in a pool, not reachable
	}
	dir := path
	if fi, err := os.Stat(path); err == nil && !fi.IsDir() {
		dir = path[:strings.LastIndex(path, "/")+1]
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return driver.StorageUsage{}, fmt.Errorf("reading free space of %s: %w", dir, err)
	}
	capacity := st.Blocks * uint64(st.Bsize)
	used := (st.Blocks - st.Bavail) * uint64(st.Bsize)
	u := driver.StorageUsage{Name: "fs:" + mountOf(dir), Capacity: capacity, Used: used}
	if capacity > 0 {
		u.Percent = 100 * float64(used) / float64(capacity)
	}
	return u, nil
}

// mountOf returns the mount point holding dir, for naming a filesystem in reports.
func mountOf(dir string) string {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return dir
	}
	best := "/"
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		mp := f[1]
		if (dir == mp || strings.HasPrefix(dir, strings.TrimSuffix(mp, "/")+"/")) && len(mp) > len(best) {
			best = mp
		}
	}
	return best
}
