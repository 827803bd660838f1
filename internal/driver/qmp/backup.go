package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/autosnap/autosnap/internal/crash"
	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/qcow2"
	qc "github.com/autosnap/autosnap/internal/qmp"
)

// SpeedEnv, when set to a number of bytes per second, limits every backup job's
// copy rate (blockdev-backup's speed, as qmpbackup's --speed-limit).
const SpeedEnv = "AUTOSNAP_QMP_BACKUP_SPEED"

// cbwTimeout bounds, in seconds, how long a guest write may wait for its old data to
// reach the fleecing image; past it the snapshot breaks (on-cbw-error=break-snapshot)
// and the backup fails, never the guest's write.
const cbwTimeout = 45

// tmpBitmap is the transient bitmap on a snapshot-access node that an inc job copies
// by: the checkpoint's bitmap merged into it at the backup's instant.
const tmpBitmap = "autosnap-bk-tmp"

func runTool(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, name, args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, trimmed(ee.Stderr))
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return out, nil
}

// bkView is a guest opened for backup work: locked, connected when QEMU runs, with
// what a killed backup left behind removed.
type bkView struct {
	*view
	bk    *bkFile
	disks []bkDisk
}

func (d *Driver) openBk(ctx context.Context, g driver.Guest) (*bkView, error) {
	v, err := d.open(ctx, g)
	if err != nil {
		return nil, err
	}
	bv := &bkView{view: v}
	if bv.bk, err = readBk(v.e); err != nil {
		v.close()
		return nil, err
	}
	if v.s == nil {
		if bv.disks, err = offlineDisks(ctx, v.m); err != nil {
			v.close()
			return nil, fmt.Errorf("guest %s: %w", v.e.name, err)
		}
		if bv.bk.Pending != nil {
			if err := bv.repairOffline(ctx); err != nil {
				v.close()
				return nil, err
			}
		}
		return bv, nil
	}
	if bv.disks, err = bkDisks(ctx, v.s); err != nil {
		v.close()
		return nil, err
	}
	return bv, nil
}

// repairBackup removes what a backup journalled in the guest's backup sidecar left in
// its running QEMU (the backup's process died, or its cleanup failed): its jobs are
// cancelled, the filter is taken out of the drive, its nodes, fleecing files and the
// unfinished checkpoint's bitmaps are removed, and CPUs it stopped run again. Every
// command that opens a running guest (view.load) calls it first, so none sees the
// fleecing filter as a disk. A damaged sidecar is left for the backup commands to
// report.
func repairBackup(ctx context.Context, s *session) error {
	f, err := readBk(s.e)
	if err != nil || f.Pending == nil {
		return nil
	}
	p := f.Pending
	if err := undo(ctx, s, p, true); err != nil {
		return fmt.Errorf("guest %s: removing what an interrupted backup (started %s) left in QEMU: %w; run the command again, or see docs/qmp.md (Backups) to remove it by hand",
			s.e.name, p.Started.Format(time.RFC3339), err)
	}
	f.Pending = nil
	return writeBk(s.e, f)
}

// repairOffline finishes an interrupted backup of a guest whose QEMU has stopped since:
// its nodes and jobs went with QEMU; the fleecing files and the unfinished
// checkpoint's bitmaps (stored if QEMU quit cleanly) are removed.
func (v *bkView) repairOffline(ctx context.Context) error {
	p := v.bk.Pending
	for _, d := range p.Disks {
		if d.FleeceFile != "" {
			if err := os.Remove(d.FleeceFile); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("guest %s: removing the fleecing image of an interrupted backup: %w", v.e.name, err)
			}
		}
	}
	if p.Checkpoint != "" {
		if err := v.removeBitmaps(ctx, p.Checkpoint, nil); err != nil {
			return fmt.Errorf("guest %s: removing the bitmaps of an interrupted backup's checkpoint %s: %w", v.e.name, p.Checkpoint, err)
		}
		for i := range v.disks {
			v.disks[i].Bitmaps = slices.DeleteFunc(v.disks[i].Bitmaps, func(b qbitmap) bool { return b.Name == p.Checkpoint })
		}
	}
	v.bk.Pending = nil
	return writeBk(v.e, v.bk)
}

// undo takes a backup's additions out of QEMU, each step only when its object is
// still there, so it finishes any partial state; with dropCheckpoint the bitmaps of
// p.Checkpoint go too. It works with its own context: it runs after the caller's
// context ended as well.
func undo(ctx context.Context, s *session, p *bkPending, dropCheckpoint bool) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
	defer cancel()
	m := s.m
	var jobs []string
	for _, d := range p.Disks {
		jobs = append(jobs, d.Job)
	}
	if err := m.CancelJobs(jobs); err != nil {
		return err
	}
	if p.Stopped {
		var st struct {
			Running bool   `json:"running"`
			Status  string `json:"status"`
		}
		if err := m.Execute(ctx, "query-status", nil, &st); err != nil {
			return err
		}
		// Paused by a stop command, as autosnap's: not a guest that is still
		// starting, migrating, suspended or stopped on an I/O error.
		if !st.Running && st.Status == "paused" {
			if err := m.Execute(ctx, "cont", nil, nil); err != nil {
				return fmt.Errorf("resuming the CPUs the backup stopped: %w", err)
			}
		}
	}
	nodes, err := nodeNames(ctx, m)
	if err != nil {
		return err
	}
	var bs []blockInfo
	if err := m.Execute(ctx, "query-block", nil, &bs); err != nil {
		return err
	}
	var errs []error
	del := func(node string) {
		if node == "" || !nodes[node] {
			return
		}
		if err := m.Execute(ctx, "blockdev-del", map[string]any{"node-name": node}, nil); err != nil {
			errs = append(errs, err)
		}
	}
	for _, d := range p.Disks {
		del(d.Snap)
		for _, b := range bs {
			if b.Qdev == d.Qdev && b.Inserted != nil && b.Inserted.NodeName == d.CBW {
				if err := m.Execute(ctx, "qom-set", map[string]any{"path": d.Qdev, "property": "drive", "value": d.Node}, nil); err != nil {
					errs = append(errs, fmt.Errorf("putting node %s back as the drive of %s: %w", d.Node, d.Qdev, err))
				}
			}
		}
		del(d.CBW)
		del(d.Target)
		del(d.Fleece)
		if dropCheckpoint && p.Checkpoint != "" {
			// The disk's node now: QEMU may have been started again since, and an
			// automatic node name (#blockNNN) changes then; the device stays.
			node := d.Node
			for _, b := range bs {
				if b.Qdev == d.Qdev && b.Inserted != nil && b.Inserted.NodeName != d.CBW {
					node = b.Inserted.NodeName
				}
			}
			err := m.Execute(ctx, "block-dirty-bitmap-remove", map[string]any{"node": node, "name": p.Checkpoint}, nil)
			if err != nil && !isNoBitmap(err) && !isNoNode(err) {
				errs = append(errs, err)
			}
		}
		if d.FleeceFile != "" {
			if err := os.Remove(d.FleeceFile); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// isNoNode reports a QMP error about a node that does not exist.
func isNoNode(err error) bool {
	var qe *qc.Error
	return errors.As(err, &qe) && (strings.Contains(qe.Desc, "Cannot find device") || strings.Contains(qe.Desc, "not found"))
}

// isNoBitmap reports a QMP error about a bitmap that does not exist.
func isNoBitmap(err error) bool {
	var qe *qc.Error
	return errors.As(err, &qe) && strings.Contains(qe.Desc, "not found")
}

func nodeNames(ctx context.Context, m *qc.Monitor) (map[string]bool, error) {
	var ns []struct {
		NodeName string `json:"node-name"`
	}
	if err := m.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &ns); err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, n := range ns {
		out[n.NodeName] = true
	}
	return out, nil
}

// BackupSource implements driver.Backupper: the guest's writable disks as QEMU (or,
// while QEMU is stopped, the sidecar and the images) shows them, QEMU's command line
// as the config, and autosnap's checkpoints, each unusable when a disk's bitmap is
// missing, inconsistent or not recording. A backup that a killed run left in QEMU is
// removed first.
func (d *Driver) BackupSource(ctx context.Context, g driver.Guest) (driver.BackupSource, error) {
	v, err := d.openBk(ctx, g)
	if err != nil {
		return driver.BackupSource{}, err
	}
	defer v.close()
	cfg, err := json.Marshal(struct {
		Argv []string `json:"argv"`
		Cwd  string   `json:"cwd,omitempty"`
	}{v.m.Argv, v.m.Cwd})
	if err != nil {
		return driver.BackupSource{}, err
	}
	src := driver.BackupSource{Config: cfg}
	for _, x := range v.disks {
		bd := driver.BackupDisk{Name: x.Name, File: x.File, Format: x.Drv, VirtualSize: x.Size, Incremental: true}
		if x.Drv != "qcow2" {
			bd.Incremental = false
			bd.NoIncremental = fmt.Sprintf("disk %s is a %s node: changes can only be tracked with persistent dirty bitmaps stored in qcow2 (convert it with qemu-img convert -O qcow2 while QEMU is stopped)", x.Name, x.Drv)
		}
		src.Disks = append(src.Disks, bd)
	}
	if len(src.Disks) == 0 {
		return driver.BackupSource{}, fmt.Errorf("guest %s has no writable disk a backup can cover", v.e.name)
	}
	src.Checkpoints = checkpoints(v.bk, v.disks)
	return src, nil
}

// createFile creates a qcow2 file of size bytes, mode 0600, on backing when not "".
func createFile(ctx context.Context, file string, size uint64, backing string) error {
	if _, err := os.Lstat(file); err == nil {
		return fmt.Errorf("%s already exists", file)
	}
	if size%512 == 0 {
		bfmt := ""
		if backing != "" {
			bfmt = "qcow2"
		}
		return qcow2.Create(file, size, backing, bfmt)
	}
	args := []string{"create", "-q", "-f", "qcow2"}
	if backing != "" {
		args = append(args, "-F", "qcow2", "-b", backing)
	}
	if _, err := runTool(ctx, "qemu-img", append(args, file, strconv.FormatUint(size, 10))...); err != nil {
		return err
	}
	return os.Chmod(file, 0o600)
}

// fleeceFile creates disk x's fleecing image: beside the disk's image (local, as fast
// as the disk: a guest write waits for its old data to land there), else beside the
// backup target.
func fleeceFile(ctx context.Context, x bkDisk, target string) (string, error) {
	name := "." + filepath.Base(x.File) + ".autosnap-fleece.qcow2"
	var firstErr error
	for _, dir := range []string{filepath.Dir(x.File), filepath.Dir(target)} {
		if !filepath.IsAbs(dir) {
			continue
		}
		f := filepath.Join(dir, name)
		if x.File == "" || strings.HasPrefix(x.File, "json:") {
			f = filepath.Join(filepath.Dir(target), "."+x.Name+".autosnap-fleece.qcow2")
		}
		if err := createFile(ctx, f, x.Size, ""); err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		return f, nil
	}
	return "", fmt.Errorf("creating the fleecing image of disk %s: %w", x.Name, firstErr)
}

// Backup implements driver.Backupper for a running or paused QEMU (a stopped one can
// be started with -S: no guest code runs, the block layer works). Every disk is read
// through copy-before-write fleecing: a copy-before-write filter becomes the disk's
// drive and saves the old data of every guest write into a local fleecing image, and
// the backup job reads the instant's view from a snapshot-access node, so the guest
// never waits on the backup target. A new checkpoint's bitmaps are added just before
// the filter goes in, so they track every change after the instant (and a few before,
// which only costs a few extra blocks). See docs/qmp.md.
//
// Targets are created here as qcow2, an inc or diff with its backing file, and opened
// by QEMU without their backing chain: blocks that became zero are written as zero
// clusters.
func (d *Driver) Backup(ctx context.Context, g driver.Guest, req driver.BackupRequest) (driver.BackupResult, error) {
	if err := req.Check(g.Name); err != nil {
		return driver.BackupResult{}, err
	}
	v, err := d.openBk(ctx, g)
	if err != nil {
		return driver.BackupResult{}, err
	}
	defer v.close()
	name := v.e.name
	if v.s == nil {
		return driver.BackupResult{}, fmt.Errorf("guest %s: QEMU is not running: backups over QMP need a running QEMU; start it with its usual command line plus -S (CPUs stay stopped, the block layer works): %w", name, driver.ErrUnsupported)
	}
	if ver := v.s.m.Version(); !ver.AtLeast(7, 1) {
		return driver.BackupResult{}, fmt.Errorf("guest %s: QEMU %s is too old: backups over QMP need copy-before-write fleecing with on-cbw-error (QEMU 7.1 or newer): %w", name, ver, driver.ErrUnsupported)
	}
	byName := map[string]bkDisk{}
	for _, x := range v.disks {
		byName[x.Name] = x
	}
	if req.Checkpoint != "" {
		if _, ok := v.bk.checkpoint(req.Checkpoint); ok {
			return driver.BackupResult{}, fmt.Errorf("guest %s already has a checkpoint %s: a backup creates a new one", name, req.Checkpoint)
		}
	}
	inc := req.Level == driver.LevelInc || req.Level == driver.LevelDiff
	p := &bkPending{Checkpoint: req.Checkpoint, Started: time.Now().UTC()}
	var thaw func()
	thawOnce := func() {
		if thaw != nil {
			thaw()
			thaw = nil
		}
	}
	defer thawOnce()
	fail := func(err error) (driver.BackupResult, error) {
		thawOnce()
		if uerr := undo(ctx, v.s, p, true); uerr != nil {
			err = fmt.Errorf("%w; cleaning up also failed (the next run retries): %v", err, uerr)
		} else {
			v.bk.Pending = nil
			_ = writeBk(v.e, v.bk)
		}
		return driver.BackupResult{}, err
	}
	var tracked []string
	for i, t := range req.Targets {
		x, ok := byName[t.Disk]
		if !ok {
			return driver.BackupResult{}, fmt.Errorf("guest %s has no writable disk %s a backup can cover", name, t.Disk)
		}
		if x.Qdev == "" {
			return driver.BackupResult{}, fmt.Errorf("guest %s disk %s is attached to no device (no qdev path): the fleecing filter cannot be put in front of it", name, t.Disk)
		}
		if slices.ContainsFunc(x.Bitmaps, func(b qbitmap) bool { return b.Name == req.Checkpoint }) && req.Checkpoint != "" {
			return driver.BackupResult{}, fmt.Errorf("guest %s disk %s already has a bitmap %s (remove it with autosnap bitmaps cleanup %s)", name, t.Disk, req.Checkpoint, name)
		}
		if inc && t.Backing != "" {
			if w := unusable(x.Bitmaps, req.Since); w != "" {
				return driver.BackupResult{}, fmt.Errorf("guest %s: checkpoint %s cannot be used on disk %s: %s: take a full backup", name, req.Since, t.Disk, w)
			}
		}
		if req.Checkpoint != "" && x.Drv == "qcow2" {
			tracked = append(tracked, t.Disk)
		}
		pfx := fmt.Sprintf("autosnap-bk%d", i)
		p.Disks = append(p.Disks, bkPendingDisk{Disk: t.Disk, Qdev: x.Qdev, Node: x.Node, Job: pfx,
			Target: pfx + "-t", Fleece: pfx + "-f", CBW: pfx + "-c", Snap: pfx + "-s"})
	}
	// The journal names every file and node before any exists.
	for i, t := range req.Targets {
		x := byName[t.Disk]
		backing := ""
		if inc {
			backing = t.Backing
		}
		if err := createFile(ctx, t.File, x.Size, backing); err != nil {
			return fail(fmt.Errorf("guest %s disk %s: creating the backup target: %w", name, t.Disk, err))
		}
		f, err := fleeceFile(ctx, x, t.File)
		if err != nil {
			return fail(fmt.Errorf("guest %s: %w", name, err))
		}
		p.Disks[i].FleeceFile = f
		v.bk.Pending = p
		if err := writeBk(v.e, v.bk); err != nil {
			os.Remove(f)
			return driver.BackupResult{}, err
		}
	}
	do := func(cmd string, args any) error {
		if err := v.s.m.Execute(ctx, cmd, args, nil); err != nil {
			return fmt.Errorf("guest %s: %s: %w", name, cmd, err)
		}
		return nil
	}
	for i, t := range req.Targets {
		pd := p.Disks[i]
		if err := do("blockdev-add", map[string]any{"driver": "qcow2", "node-name": pd.Target, "backing": nil,
			"file": map[string]any{"driver": "file", "filename": t.File}}); err != nil {
			return fail(err)
		}
		if err := do("blockdev-add", map[string]any{"driver": "qcow2", "node-name": pd.Fleece,
			"file": map[string]any{"driver": "file", "filename": pd.FleeceFile}}); err != nil {
			return fail(err)
		}
		if err := do("blockdev-add", map[string]any{"driver": "copy-before-write", "node-name": pd.CBW,
			"file": pd.Node, "target": pd.Fleece, "on-cbw-error": "break-snapshot", "cbw-timeout": cbwTimeout}); err != nil {
			return fail(err)
		}
	}
	if req.Freeze != nil {
		if thaw, err = req.Freeze(ctx); err != nil {
			return fail(fmt.Errorf("guest %s: freezing before the backup: %w", name, err))
		}
	}
	for _, dn := range tracked {
		x := byName[dn]
		if err := do("block-dirty-bitmap-add", map[string]any{"node": x.Node, "name": req.Checkpoint, "persistent": true}); err != nil {
			return fail(err)
		}
	}
	// Several disks switch to their filters one after the other; stopped CPUs make
	// that one instant for all of them.
	// The watchdog resumes them if this process dies while they are stopped; the
	// sidecar says a running guest was stopped by autosnap, so nothing resumes a
	// guest someone else paused.
	release := func() {}
	defer func() { release() }()
	if v.s.state == driver.StateRunning && len(req.Targets) > 1 {
		rel, err := d.armResume(ctx, g)
		if err != nil {
			return fail(fmt.Errorf("guest %s: %w", name, err))
		}
		release = func() {
			release = func() {}
			if err := rel(); err != nil {
				fmt.Fprintf(os.Stderr, "autosnap: guest %s: stopping the watchdog after the CPUs ran again: %v\n", name, err)
			}
		}
		p.Stopped = true
		if err := writeBk(v.e, v.bk); err != nil {
			return fail(err)
		}
		if err := do("stop", nil); err != nil {
			return fail(err)
		}
		crash.Point(crashBackupStopped)
	}
	for _, pd := range p.Disks {
		if err := do("qom-set", map[string]any{"path": pd.Qdev, "property": "drive", "value": pd.CBW}); err != nil {
			return fail(err)
		}
	}
	instant := time.Now().UTC()
	if p.Stopped {
		if err := do("cont", nil); err != nil {
			return fail(err)
		}
		p.Stopped = false
		if err := writeBk(v.e, v.bk); err != nil {
			return fail(err)
		}
		release()
	}
	var actions []map[string]any
	act := func(typ string, data map[string]any) {
		actions = append(actions, map[string]any{"type": typ, "data": data})
	}
	speed := int64(0)
	if s := os.Getenv(SpeedEnv); s != "" {
		if speed, err = strconv.ParseInt(s, 10, 64); err != nil || speed < 0 {
			return fail(fmt.Errorf("%s=%q is not a number of bytes per second", SpeedEnv, s))
		}
	}
	for i, t := range req.Targets {
		pd := p.Disks[i]
		x := byName[t.Disk]
		if err := do("blockdev-add", map[string]any{"driver": "snapshot-access", "node-name": pd.Snap, "file": pd.CBW}); err != nil {
			return fail(err)
		}
		job := map[string]any{"job-id": pd.Job, "device": pd.Snap, "target": pd.Target, "sync": "full", "auto-dismiss": false}
		if speed > 0 {
			job["speed"] = speed
		}
		if inc && t.Backing != "" {
			var gran uint64
			for _, b := range x.Bitmaps {
				if b.Name == req.Since {
					gran = b.Granularity
				}
			}
			add := map[string]any{"node": pd.Snap, "name": tmpBitmap, "persistent": false}
			if gran > 0 {
				add["granularity"] = gran
			}
			act("block-dirty-bitmap-add", add)
			act("block-dirty-bitmap-merge", map[string]any{"node": pd.Snap, "target": tmpBitmap,
				"bitmaps": []any{map[string]any{"node": pd.Node, "name": req.Since}}})
			job["sync"], job["bitmap"], job["bitmap-mode"] = "bitmap", tmpBitmap, "never"
		}
		act("blockdev-backup", job)
	}
	if err := do("transaction", map[string]any{"actions": actions}); err != nil {
		return fail(err)
	}
	thawOnce()
	var jobs []string
	for _, pd := range p.Disks {
		jobs = append(jobs, pd.Job)
	}
	failed, err := v.s.m.WaitJobs(ctx, jobs, req.Progress)
	if err != nil {
		return fail(fmt.Errorf("guest %s: backup: %w", name, err))
	}
	if len(failed) > 0 {
		var msgs []string
		for _, pd := range p.Disks {
			if e, ok := failed[pd.Job]; ok {
				msgs = append(msgs, "disk "+pd.Disk+": "+e)
			}
		}
		return fail(fmt.Errorf("guest %s: the backup job failed: %s (check free space where the backup and the fleecing images are written)", name, strings.Join(msgs, "; ")))
	}
	if err := undo(ctx, v.s, p, false); err != nil {
		return fail(fmt.Errorf("guest %s: the backup completed, but removing its fleecing nodes failed: %w", name, err))
	}
	if req.Checkpoint != "" {
		v.bk.Checkpoints = append(v.bk.Checkpoints, bkCheckpoint{Name: req.Checkpoint, Created: instant, Disks: tracked})
	}
	v.bk.Pending = nil
	if err := writeBk(v.e, v.bk); err != nil {
		return fail(err)
	}
	res := driver.BackupResult{Instant: instant, Bytes: map[string]uint64{}}
	for _, t := range req.Targets {
		n, err := qcow2.AllocatedBytes(ctx, t.File)
		if err != nil {
			return driver.BackupResult{}, fmt.Errorf("guest %s disk %s: %w", name, t.Disk, err)
		}
		res.Bytes[t.Disk] = n
	}
	return res, nil
}

// DeleteCheckpoint implements driver.Backupper: the checkpoint's bitmap goes from
// every disk (each bitmap records every change since its own checkpoint, so no later
// checkpoint loses anything), then the sidecar forgets it. A bitmap already gone or
// inconsistent is no obstacle (inconsistent bitmaps can only be removed). While QEMU is
// stopped the bitmaps are removed from the images.
func (d *Driver) DeleteCheckpoint(ctx context.Context, g driver.Guest, name string) error {
	if !strings.HasPrefix(name, CheckpointPrefix) {
		return fmt.Errorf("guest %s: checkpoint %s is not autosnap's (its names start with %q); autosnap never removes others' checkpoints", g.Name, name, CheckpointPrefix)
	}
	v, err := d.openBk(ctx, g)
	if err != nil {
		return err
	}
	defer v.close()
	i, ok := v.bk.checkpoint(name)
	if !ok {
		return fmt.Errorf("guest %s has no checkpoint %s: %w", v.e.name, name, driver.ErrNotFound)
	}
	if err := v.removeBitmaps(ctx, name, v.bk.Checkpoints[i].Disks); err != nil {
		return fmt.Errorf("guest %s: removing the bitmaps of checkpoint %s: %w", v.e.name, name, err)
	}
	v.bk.Checkpoints = slices.Delete(v.bk.Checkpoints, i, i+1)
	return writeBk(v.e, v.bk)
}

// removeBitmaps removes bitmap name from the named disks (all disks when nil), from
// QEMU or, while it is stopped, from the images.
func (v *bkView) removeBitmaps(ctx context.Context, name string, disks []string) error {
	for _, x := range v.disks {
		if disks != nil && !slices.Contains(disks, x.Name) {
			continue
		}
		if !slices.ContainsFunc(x.Bitmaps, func(b qbitmap) bool { return b.Name == name }) {
			continue
		}
		if v.s != nil {
			err := v.s.m.Execute(ctx, "block-dirty-bitmap-remove", map[string]any{"node": x.Node, "name": name}, nil)
			if err != nil && !isNoBitmap(err) {
				return fmt.Errorf("disk %s: %w", x.Name, err)
			}
			continue
		}
		if _, err := runTool(ctx, "qemu-img", "bitmap", "--remove", x.File, name); err != nil {
			return fmt.Errorf("disk %s: %w", x.Name, err)
		}
	}
	return nil
}
