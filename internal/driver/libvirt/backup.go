package libvirt

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/qcow2"
)

var _ driver.Backupper = (*Driver)(nil)

// backupPoll is how often a running backup job is polled for progress and its end,
// after its first backupFastFor, during which it is polled every backupPollFast.
const (
	backupPoll     = 100 * time.Millisecond
	backupPollFast = 10 * time.Millisecond
	backupFastFor  = 2 * time.Second
)

// pollInterval is the wait before the next poll of a job running for elapsed.
func pollInterval(elapsed time.Duration) time.Duration {
	if elapsed < backupFastFor {
		return backupPollFast
	}
	return backupPoll
}

// backupDisks lists the disks of a definition a backup can cover: real disks (not
// cdrom, floppy or lun), writable and not shared (a read-only or shared disk is not the
// guest's own state), not transient (libvirt cannot block-job them), with a source.
func backupDisks(x *libvirtxml.Domain) []*libvirtxml.DomainDisk {
	if x.Devices == nil {
		return nil
	}
	var out []*libvirtxml.DomainDisk
	for i := range x.Devices.Disks {
		dk := &x.Devices.Disks[i]
		if dk.Device != "" && dk.Device != "disk" {
			continue
		}
		if dk.ReadOnly != nil || dk.Shareable != nil || dk.Transient != nil || dk.Target == nil || dk.Source == nil {
			continue
		}
		out = append(out, dk)
	}
	return out
}

func diskFormat(dk *libvirtxml.DomainDisk) string {
	if dk.Driver != nil && dk.Driver.Type != "" {
		return dk.Driver.Type
	}
	return "raw"
}

// BackupSource implements driver.Backupper: the disks of the definition in force (the
// live one of a running or paused guest, whose sources are the tops of any snapshot
// overlays), the persistent definition without secrets as the config to store, and
// autosnap's checkpoints with their usability.
func (d *Driver) BackupSource(ctx context.Context, g driver.Guest) (driver.BackupSource, error) {
	return d.backupSource(ctx, g, true)
}

// BackupSourceUnvalidated is BackupSource without libvirt's validation of a running
// guest's checkpoints: their Unusable is left empty, which saves a libvirt job (a QEMU
// query and a rewrite of the checkpoint's metadata, 0.1-0.3 s on a busy host) per
// checkpoint. The check is not dropped but moves into Backup: backup-begin from a
// checkpoint runs libvirt's same validation of its bitmaps (present in the top image,
// no gap below, recording, persistent, consistent) atomically before anything starts,
// and a checkpoint that fails it fails the Backup with an *UnusableCheckpointError,
// after which the caller decides again (the backup engine takes a full, or refuses an
// explicit inc). A shut-off guest's checkpoints are judged from its images as before.
func (d *Driver) BackupSourceUnvalidated(ctx context.Context, g driver.Guest) (driver.BackupSource, error) {
	return d.backupSource(ctx, g, false)
}

// UnusableCheckpointError is a backup that did not start because libvirt found the
// bitmaps of the checkpoint it was to start from unusable (missing, broken by a gap,
// or inconsistent after an unclean QEMU exit). Nothing was created.
type UnusableCheckpointError struct {
	Guest, Node, Checkpoint string
	// Reason is libvirt's message.
	Reason string
	Err    error
}

func (e *UnusableCheckpointError) Error() string {
	return fmt.Sprintf("guest %s on %s: checkpoint %s cannot be used (%s): take a full backup: %v", e.Guest, e.Node, e.Checkpoint, e.Reason, e.Err)
}

func (e *UnusableCheckpointError) Unwrap() error { return e.Err }

// UnusableCheckpoint names the checkpoint and says why it cannot be used, in the
// words BackupSource puts in driver.Checkpoint.Unusable.
func (e *UnusableCheckpointError) UnusableCheckpoint() (name, why string) {
	return e.Checkpoint, "libvirt cannot read its changes: " + e.Reason
}

func (d *Driver) backupSource(ctx context.Context, g driver.Guest, validate bool) (driver.BackupSource, error) {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return driver.BackupSource{}, err
	}
	x, active, err := d.currentXML(ctx, dom)
	if err != nil {
		return driver.BackupSource{}, err
	}
	cfg, err := call(ctx, func() (string, error) { return d.l.DomainGetXMLDesc(dom, golibvirt.DomainXMLInactive) })
	if err != nil {
		return driver.BackupSource{}, fmt.Errorf("guest %s on %s: reading its definition: %w", g.Name, d.node, d.notFound(g.Name, err))
	}
	src := driver.BackupSource{Config: []byte(cfg)}
	for _, dk := range backupDisks(x) {
		bd := driver.BackupDisk{Name: dk.Target.Dev, File: sourcePath(dk.Source), Format: diskFormat(dk), Incremental: true}
		type cap struct{ c uint64 }
		c, err := call(ctx, func() (cap, error) {
			_, c, _, err := d.l.DomainGetBlockInfo(dom, bd.Name, 0)
			return cap{c}, err
		})
		if err != nil {
			return driver.BackupSource{}, fmt.Errorf("guest %s on %s: reading the size of disk %s: %w", g.Name, d.node, bd.Name, d.notFound(g.Name, err))
		}
		bd.VirtualSize = c.c
		switch {
		case bd.Format != "qcow2":
			bd.Incremental = false
			bd.NoIncremental = fmt.Sprintf("disk %s is a %s image: changes can only be tracked with dirty bitmaps stored in qcow2 (convert it with qemu-img convert -O qcow2 while the guest is shut off)", bd.Name, bd.Format)
		case bd.File == "" && !active:
			bd.Incremental = false
			bd.NoIncremental = fmt.Sprintf("disk %s is not a local file: autosnap reads the bitmaps of a shut-off guest's disks from their images", bd.Name)
		}
		src.Disks = append(src.Disks, bd)
	}
	if len(src.Disks) == 0 {
		return driver.BackupSource{}, fmt.Errorf("guest %s on %s has no disk a backup can cover (only cdroms, read-only, shared or transient disks)", g.Name, d.node)
	}
	var chains map[string][]string
	if !active {
		if chains, err = d.chainsOf(ctx, x, false); err != nil {
			return driver.BackupSource{}, fmt.Errorf("guest %s: %w", g.Name, err)
		}
	}
	src.Checkpoints, err = d.checkpoints(ctx, dom, active && validate, !active, chains)
	if err != nil {
		return driver.BackupSource{}, fmt.Errorf("guest %s: %w", g.Name, err)
	}
	return src, nil
}

// backupXML is libvirt's <domainbackup> in push mode.
type backupXML struct {
	XMLName     xml.Name        `xml:"domainbackup"`
	Mode        string          `xml:"mode,attr"`
	Incremental string          `xml:"incremental,omitempty"`
	Disks       []backupDiskXML `xml:"disks>disk"`
}

type backupDiskXML struct {
	Name       string `xml:"name,attr"`
	Backup     string `xml:"backup,attr"`
	Type       string `xml:"type,attr,omitempty"`
	BackupMode string `xml:"backupmode,attr,omitempty"`
	Target     *struct {
		File string `xml:"file,attr"`
	} `xml:"target"`
	Driver *struct {
		Type string `xml:"type,attr"`
	} `xml:"driver"`
}

// Backup implements driver.Backupper. A running or paused guest is backed up by
// libvirt in push mode (backup-begin with the new checkpoint in the same call, so the
// checkpoint's instant is the backup's); a shut-off guest by qemu-storage-daemon on its
// images (backup_offline.go).
//
// Every target is created here as qcow2 before the job (an inc or diff with its
// backing file set to BackupTarget.Backing), mode 0600, and handed to libvirt as an
// existing file. QEMU opens it without its backing chain and copies only the blocks
// the bitmap marks; blocks that became zero are written as zero clusters, which hide
// the backing file's data (TestBackupZeroedRegion).
func (d *Driver) Backup(ctx context.Context, g driver.Guest, req driver.BackupRequest) (driver.BackupResult, error) {
	if err := req.Check(g.Name); err != nil {
		return driver.BackupResult{}, err
	}
	if !d.local {
		return driver.BackupResult{}, fmt.Errorf("guest %s: backups are written by autosnap on the guest's host: run it there (qemu:///system), with the target directory on that host or a share it mounts", g.Name)
	}
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return driver.BackupResult{}, err
	}
	unlock := d.domLock(g.Key())
	defer unlock()
	x, active, err := d.currentXML(ctx, dom)
	if err != nil {
		return driver.BackupResult{}, err
	}
	disks := map[string]*libvirtxml.DomainDisk{}
	for _, dk := range backupDisks(x) {
		disks[dk.Target.Dev] = dk
	}
	for _, t := range req.Targets {
		if disks[t.Disk] == nil {
			return driver.BackupResult{}, fmt.Errorf("guest %s has no disk %s a backup can cover", g.Name, t.Disk)
		}
	}
	if !active {
		if err := d.resumeCheckpoints(ctx, dom, false); err != nil {
			return driver.BackupResult{}, fmt.Errorf("guest %s: restoring checkpoints set aside for a snapshot: %w", g.Name, err)
		}
		return d.backupOffline(ctx, g, dom, x, disks, req)
	}
	return d.backupLive(ctx, g, dom, x, disks, req)
}

// incremental reports whether disk t is copied relative to req.Since: an inc or diff of
// a disk that has a backing point (a disk without one, e.g. raw or newly added, is
// copied whole into a file without backing).
func incremental(req driver.BackupRequest, t driver.BackupTarget) bool {
	return (req.Level == driver.LevelInc || req.Level == driver.LevelDiff) && t.Backing != ""
}

// createTarget creates one target file, mode 0600: qcow2 of the disk's size, with its
// backing file when the disk is copied incrementally. It is written in-process
// (internal/qcow2, what qemu-img create writes, without a process start); a size
// that is no multiple of 512 goes to qemu-img.
func createTarget(ctx context.Context, t driver.BackupTarget, size uint64, withBacking bool) error {
	if _, err := os.Lstat(t.File); err == nil {
		return fmt.Errorf("target %s already exists", t.File)
	}
	if size%512 == 0 {
		backing, bfmt := "", ""
		if withBacking {
			backing, bfmt = t.Backing, "qcow2"
		}
		return qcow2.Create(t.File, size, backing, bfmt)
	}
	args := []string{"create", "-q", "-f", "qcow2"}
	if withBacking {
		args = append(args, "-F", "qcow2", "-b", t.Backing)
	}
	args = append(args, t.File, strconv.FormatUint(size, 10))
	if _, err := runCmd(ctx, "qemu-img", args...); err != nil {
		return err
	}
	return os.Chmod(t.File, 0o600)
}

func (d *Driver) backupLive(ctx context.Context, g driver.Guest, dom golibvirt.Domain, x *libvirtxml.Domain, disks map[string]*libvirtxml.DomainDisk, req driver.BackupRequest) (driver.BackupResult, error) {
	if err := d.abortStaleBackup(ctx, dom); err != nil {
		return driver.BackupResult{}, fmt.Errorf("guest %s: %w", g.Name, err)
	}
	if req.Checkpoint != "" {
		if _, err := call(ctx, func() (golibvirt.DomainCheckpoint, error) {
			return d.l.DomainCheckpointLookupByName(dom, req.Checkpoint, 0)
		}); err == nil {
			return driver.BackupResult{}, fmt.Errorf("guest %s already has a checkpoint %s: a backup creates a new one", g.Name, req.Checkpoint)
		}
	}
	bx := backupXML{Mode: "push"}
	inc := req.Level == driver.LevelInc || req.Level == driver.LevelDiff
	if inc {
		bx.Incremental = req.Since
	}
	cx := checkpointXML{Name: req.Checkpoint, Description: "autosnap backup checkpoint"}
	targets := map[string]driver.BackupTarget{}
	for _, t := range req.Targets {
		targets[t.Disk] = t
	}
	for _, dk := range backupDisks(x) {
		name := dk.Target.Dev
		t, ok := targets[name]
		if !ok {
			bx.Disks = append(bx.Disks, backupDiskXML{Name: name, Backup: "no"})
			cx.Disks = append(cx.Disks, checkpointDiskXML{Name: name, Checkpoint: "no"})
			continue
		}
		bd := backupDiskXML{Name: name, Backup: "yes", Type: "file"}
		bd.Target = &struct {
			File string `xml:"file,attr"`
		}{t.File}
		bd.Driver = &struct {
			Type string `xml:"type,attr"`
		}{"qcow2"}
		if inc && !incremental(req, t) {
			bd.BackupMode = "full"
		}
		bx.Disks = append(bx.Disks, bd)
		if diskFormat(dk) == "qcow2" {
			cx.Disks = append(cx.Disks, checkpointDiskXML{Name: name, Checkpoint: "bitmap"})
		} else {
			cx.Disks = append(cx.Disks, checkpointDiskXML{Name: name, Checkpoint: "no"})
		}
	}
	for _, t := range req.Targets {
		type cap struct{ c uint64 }
		c, err := call(ctx, func() (cap, error) {
			_, c, _, err := d.l.DomainGetBlockInfo(dom, t.Disk, 0)
			return cap{c}, err
		})
		if err != nil {
			return driver.BackupResult{}, fmt.Errorf("guest %s: reading the size of disk %s: %w", g.Name, t.Disk, err)
		}
		if err := createTarget(ctx, t, c.c, incremental(req, t)); err != nil {
			return driver.BackupResult{}, fmt.Errorf("guest %s disk %s: creating the backup target: %w", g.Name, t.Disk, err)
		}
	}
	bxs, err := xml.Marshal(bx)
	if err != nil {
		return driver.BackupResult{}, err
	}
	var cps golibvirt.OptString
	if req.Checkpoint != "" {
		b, err := xml.Marshal(cx)
		if err != nil {
			return driver.BackupResult{}, err
		}
		cps = golibvirt.OptString{string(b)}
	}

	var thaw func()
	if req.Freeze != nil {
		thaw, err = req.Freeze(ctx)
		if err != nil {
			return driver.BackupResult{}, fmt.Errorf("guest %s: freezing before the backup: %w", g.Name, err)
		}
	}
	err = call0(ctx, func() error {
		return d.l.DomainBackupBegin(dom, string(bxs), cps, golibvirt.DomainBackupBeginReuseExternal)
	})
	instant := time.Now().UTC()
	if thaw != nil {
		thaw()
	}
	if err != nil {
		if c := errCode(err); inc && (c == golibvirt.ErrCheckpointInconsistent || c == golibvirt.ErrNoDomainCheckpoint) {
			return driver.BackupResult{}, &UnusableCheckpointError{Guest: g.Name, Node: d.node, Checkpoint: req.Since, Reason: libvirtMessage(err), Err: err}
		}
		// An error libvirt reports means nothing started (the call is atomic); a call
		// abandoned on ctx or a lost connection may still have started the job.
		var lerr golibvirt.Error
		if !errors.As(err, &lerr) {
			d.undoBackup(g, dom, req.Checkpoint)
		}
		return driver.BackupResult{}, fmt.Errorf("guest %s on %s: starting the backup job: %w", g.Name, d.node, err)
	}
	if err := d.waitBackup(ctx, g, dom, req.Progress); err != nil {
		d.undoBackup(g, dom, req.Checkpoint)
		return driver.BackupResult{}, err
	}
	res := driver.BackupResult{Instant: instant, Bytes: map[string]uint64{}}
	for _, t := range req.Targets {
		n, err := qcow2.AllocatedBytes(ctx, t.File)
		if err != nil {
			return driver.BackupResult{}, fmt.Errorf("guest %s disk %s: %w", g.Name, t.Disk, err)
		}
		res.Bytes[t.Disk] = n
	}
	return res, nil
}

// undoBackup stops the job of a failed backup and removes the checkpoint it created,
// with a fresh context: the caller's may be what ended.
func (d *Driver) undoBackup(g driver.Guest, dom golibvirt.Domain, checkpoint string) {
	ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
	defer cancel()
	if _, err := call(ctx, func() (string, error) { return d.l.DomainBackupGetXMLDesc(dom, 0) }); err == nil {
		_ = call0(ctx, func() error { return d.l.DomainAbortJob(dom) })
		for i := 0; i < 50; i++ {
			if _, err := call(ctx, func() (string, error) { return d.l.DomainBackupGetXMLDesc(dom, 0) }); err != nil {
				break
			}
			time.Sleep(backupPoll)
		}
	}
	if checkpoint == "" {
		return
	}
	if err := d.deleteCheckpoint(ctx, g, dom, checkpoint); err != nil && !errors.Is(err, driver.ErrNotFound) {
		// The engine removes checkpoints without a completed point on its next run.
		_ = err
	}
}

// jobStat reads a typed parameter of job statistics as a number.
func jobStat(params []golibvirt.TypedParam, names ...string) (uint64, bool) {
	for _, n := range names {
		for _, p := range params {
			if p.Field != n {
				continue
			}
			switch v := p.Value.I.(type) {
			case uint64:
				return v, true
			case int64:
				return uint64(v), true
			case int32:
				return uint64(v), true
			case uint32:
				return uint64(v), true
			}
		}
	}
	return 0, false
}

func jobString(params []golibvirt.TypedParam, name string) string {
	for _, p := range params {
		if p.Field == name {
			if s, ok := p.Value.I.(string); ok {
				return s
			}
		}
	}
	return ""
}

// waitBackup polls the domain's job until the backup ends, reporting progress, and
// reads the completed job's outcome. When ctx ends it aborts the job.
func (d *Driver) waitBackup(ctx context.Context, g driver.Guest, dom golibvirt.Domain, progress func(done, total uint64)) error {
	type stats struct {
		typ    int32
		params []golibvirt.TypedParam
	}
	get := func(flags golibvirt.DomainGetJobStatsFlags) (stats, error) {
		return call(ctx, func() (stats, error) {
			t, p, err := d.l.DomainGetJobStats(dom, flags)
			return stats{t, p}, err
		})
	}
	var last uint64
	// An incremental job often ends within a few hundred milliseconds, where a
	// backupPoll interval would add up to a tenth of a second to it: poll every
	// backupPollFast (one cheap RPC) for the first backupFastFor, then settle.
	start := time.Now()
	for {
		s, err := get(0)
		if err != nil {
			return fmt.Errorf("guest %s on %s: reading the backup job: %w", g.Name, d.node, d.notFound(g.Name, err))
		}
		if golibvirt.DomainJobType(s.typ) == golibvirt.DomainJobNone {
			break
		}
		if progress != nil {
			done, _ := jobStat(s.params, "disk_processed", "data_processed")
			total, _ := jobStat(s.params, "disk_total", "data_total")
			if done != last || done == 0 {
				progress(done, total)
				last = done
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("guest %s on %s: backup stopped: %w", g.Name, d.node, ctx.Err())
		case <-time.After(pollInterval(time.Since(start))):
		}
	}
	s, err := get(golibvirt.DomainJobStatsCompleted)
	if err != nil {
		return fmt.Errorf("guest %s on %s: reading the finished backup job: %w", g.Name, d.node, err)
	}
	switch golibvirt.DomainJobType(s.typ) {
	case golibvirt.DomainJobCompleted:
		if progress != nil {
			total, _ := jobStat(s.params, "disk_total", "data_total")
			progress(total, total)
		}
		return nil
	case golibvirt.DomainJobCancelled:
		return fmt.Errorf("guest %s on %s: the backup job was cancelled (virsh domjobabort?): %s", g.Name, d.node, jobString(s.params, "errmsg"))
	default:
		msg := jobString(s.params, "errmsg")
		if msg == "" {
			msg = "libvirt gives no reason; see the libvirtd log"
		}
		return fmt.Errorf("guest %s on %s: the backup job failed: %s (check free space where the backup is written)", g.Name, d.node, msg)
	}
}

// abortStaleBackup aborts a backup job left running by a killed run: one whose every
// target file is gone (the repository removes a partial point's files before the next
// backup). A job whose targets exist belongs to a live backup and makes this fail.
func (d *Driver) abortStaleBackup(ctx context.Context, dom golibvirt.Domain) error {
	s, err := call(ctx, func() (string, error) { return d.l.DomainBackupGetXMLDesc(dom, 0) })
	if err != nil {
		return nil // no backup job (or a shut-off guest)
	}
	var bx backupXML
	if err := xml.Unmarshal([]byte(s), &bx); err != nil {
		return fmt.Errorf("a backup job is running and its definition is unreadable: %w", err)
	}
	var live []string
	for _, dk := range bx.Disks {
		if dk.Target == nil || dk.Target.File == "" {
			continue
		}
		if _, err := os.Stat(dk.Target.File); err == nil {
			live = append(live, dk.Target.File)
		}
	}
	if bx.Mode == "pull" || len(live) > 0 {
		return fmt.Errorf("another backup job is running on it (writing %s); wait for it, or stop it with virsh domjobabort %s", strings.Join(live, ", "), dom.Name)
	}
	if err := call0(ctx, func() error { return d.l.DomainAbortJob(dom) }); err != nil {
		return fmt.Errorf("aborting a backup job left by an interrupted run: %w", err)
	}
	for i := 0; i < 100; i++ {
		if _, err := call(ctx, func() (string, error) { return d.l.DomainBackupGetXMLDesc(dom, 0) }); err != nil {
			return nil
		}
		time.Sleep(backupPoll)
	}
	return fmt.Errorf("a backup job left by an interrupted run did not stop after an abort; check virsh domjobinfo %s", dom.Name)
}

// absBacking resolves a target's backing name against the target's directory, as
// qcow2 does.
func absBacking(t driver.BackupTarget) string {
	if filepath.IsAbs(t.Backing) {
		return t.Backing
	}
	return filepath.Join(filepath.Dir(t.File), t.Backing)
}
