package libvirt

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/qcow2"
)

// backupOffline backs up a shut-off guest with qemu-storage-daemon on its images
// (libvirt cannot create checkpoints for an inactive domain). The new checkpoint is a
// persistent bitmap added to each qcow2 disk's active image in the same transaction
// that starts the copy, recorded in libvirt as checkpoint metadata (a redefine), so
// that once the guest runs again QEMU loads the bitmap, libvirt knows the checkpoint,
// and the next backup, live or not, continues the chain. An inc or diff copies the
// blocks set in req.Since's bitmap (sync=bitmap, leaving it untouched).
//
// Freeze is not called: a shut-off guest has nothing to freeze.
func (d *Driver) backupOffline(ctx context.Context, g driver.Guest, dom golibvirt.Domain, x *libvirtxml.Domain, disks map[string]*libvirtxml.DomainDisk, req driver.BackupRequest) (driver.BackupResult, error) {
	type job struct {
		t      driver.BackupTarget
		file   string
		format string
		inc    bool
		bitmap bool // a bitmap for req.Checkpoint is added to this disk
		// chain and formats are the disk's images, active first; the top run of them
		// carries req.Since's bitmap.
		chain, formats []string
		run            int
	}
	var jobs []job
	cache := bitmapCache{}
	for _, t := range req.Targets {
		dk := disks[t.Disk]
		j := job{t: t, file: sourcePath(dk.Source), format: diskFormat(dk), inc: incremental(req, t)}
		if j.file == "" || dk.Source.File == nil && dk.Source.Block == nil {
			return driver.BackupResult{}, fmt.Errorf("guest %s is shut off and disk %s is not a local file or block device: start the guest to back it up through libvirt", g.Name, t.Disk)
		}
		j.bitmap = req.Checkpoint != "" && j.format == "qcow2"
		infos, err := qemuImgInfo(ctx, j.file)
		if err != nil {
			return driver.BackupResult{}, fmt.Errorf("guest %s disk %s: %w", g.Name, t.Disk, err)
		}
		for _, in := range infos {
			j.chain = append(j.chain, in.Filename)
			j.formats = append(j.formats, in.Format)
		}
		if j.inc {
			if j.format != "qcow2" {
				return driver.BackupResult{}, fmt.Errorf("guest %s disk %s is %s: it has no dirty bitmaps, so it can only be backed up in full", g.Name, t.Disk, j.format)
			}
			n, why, err := cache.bitmapRun(ctx, j.chain, req.Since)
			if err != nil {
				return driver.BackupResult{}, fmt.Errorf("guest %s disk %s: %w", g.Name, t.Disk, err)
			}
			if why != "" {
				return driver.BackupResult{}, fmt.Errorf("guest %s disk %s: changes since checkpoint %s cannot be read (%s): take a full backup", g.Name, t.Disk, req.Since, why)
			}
			j.run = n
		}
		jobs = append(jobs, j)
	}
	// The new checkpoint's name must be free, in libvirt and in the images: the
	// clean-up of a failed backup removes bitmaps of that name.
	if req.Checkpoint != "" {
		if _, err := call(ctx, func() (golibvirt.DomainCheckpoint, error) {
			return d.l.DomainCheckpointLookupByName(dom, req.Checkpoint, 0)
		}); err == nil {
			return driver.BackupResult{}, fmt.Errorf("guest %s already has a checkpoint %s: a backup creates a new one", g.Name, req.Checkpoint)
		}
		for _, j := range jobs {
			if !j.bitmap {
				continue
			}
			bms, err := cache.get(ctx, j.file)
			if err != nil {
				return driver.BackupResult{}, fmt.Errorf("guest %s disk %s: %w", g.Name, j.t.Disk, err)
			}
			if slices.ContainsFunc(bms, func(b qemuBitmap) bool { return b.Name == req.Checkpoint }) {
				return driver.BackupResult{}, fmt.Errorf("guest %s disk %s: %s already holds a bitmap %s that no checkpoint accounts for; remove it with autosnap bitmaps cleanup %s", g.Name, j.t.Disk, j.file, req.Checkpoint, g.Name)
			}
		}
	}
	if req.Since != "" {
		if _, err := call(ctx, func() (golibvirt.DomainCheckpoint, error) { return d.l.DomainCheckpointLookupByName(dom, req.Since, 0) }); err != nil {
			return driver.BackupResult{}, fmt.Errorf("guest %s on %s: checkpoint %s: %w", g.Name, d.node, req.Since, err)
		}
	}
	for _, j := range jobs {
		type cap struct{ c uint64 }
		c, err := call(ctx, func() (cap, error) {
			_, c, _, err := d.l.DomainGetBlockInfo(dom, j.t.Disk, 0)
			return cap{c}, err
		})
		if err != nil {
			return driver.BackupResult{}, fmt.Errorf("guest %s: reading the size of disk %s: %w", g.Name, j.t.Disk, err)
		}
		if err := createTarget(ctx, j.t, c.c, j.inc); err != nil {
			return driver.BackupResult{}, fmt.Errorf("guest %s disk %s: creating the backup target: %w", g.Name, j.t.Disk, err)
		}
	}

	q, err := startQSD(ctx)
	if err != nil {
		return driver.BackupResult{}, fmt.Errorf("guest %s (shut off): %w", g.Name, err)
	}
	fail := func(err error) (driver.BackupResult, error) {
		// A clean exit stores the images' bitmaps; a killed daemon would leave every
		// bitmap of a writable image marked inconsistent, breaking all checkpoints.
		qctx, cancel := context.WithTimeout(context.Background(), d.timeout)
		defer cancel()
		if qerr := q.quit(qctx); qerr != nil {
			q.kill()
		}
		// The bitmap of the checkpoint that was not made is removed, so no orphan stays.
		for _, j := range jobs {
			if j.bitmap {
				if bms, berr := imageBitmaps(context.Background(), j.file); berr == nil {
					for _, b := range bms {
						if b.Name == req.Checkpoint {
							_, _ = runCmd(context.Background(), "qemu-img", "bitmap", "--remove", j.file, req.Checkpoint)
						}
					}
				}
			}
		}
		return driver.BackupResult{}, fmt.Errorf("guest %s (shut off): %w", g.Name, err)
	}
	var actions []map[string]any
	for i, j := range jobs {
		top := fmt.Sprintf("src%d", i)
		// The chain is opened bottom up with names, so bitmaps below the active image
		// can be merged; only the active image is writable, and only to add a bitmap.
		lower := ""
		for k := len(j.chain) - 1; k >= 0; k-- {
			node := fmt.Sprintf("src%dl%d", i, k)
			if k == 0 {
				node = top
			}
			file := map[string]any{"driver": "file", "filename": j.chain[k]}
			if fi, err := os.Stat(j.chain[k]); err == nil && fi.Mode()&os.ModeDevice != 0 {
				file["driver"] = "host_device"
			}
			img := map[string]any{"driver": j.formats[k], "node-name": node, "file": file, "read-only": k > 0 || !j.bitmap}
			if j.formats[k] != "raw" {
				img["backing"] = nil
				if lower != "" {
					img["backing"] = lower
				}
			}
			if _, err := q.run(ctx, "blockdev-add", img); err != nil {
				return fail(fmt.Errorf("opening disk %s (%s): %w", j.t.Disk, j.chain[k], err))
			}
			lower = node
		}
		tgt := map[string]any{"driver": "qcow2", "node-name": fmt.Sprintf("tgt%d", i),
			"file": map[string]any{"driver": "file", "filename": j.t.File}, "backing": nil}
		if _, err := q.run(ctx, "blockdev-add", tgt); err != nil {
			return fail(fmt.Errorf("opening the target of disk %s: %w", j.t.Disk, err))
		}
		bk := map[string]any{"job-id": fmt.Sprintf("job%d", i), "device": top,
			"target": fmt.Sprintf("tgt%d", i), "sync": "full", "auto-dismiss": false}
		if j.inc {
			// The changes since the checkpoint are the union of its bitmaps along the run
			// (as libvirt merges them for a running guest), in a temporary bitmap.
			var srcs []map[string]any
			for k := 0; k < j.run; k++ {
				node := fmt.Sprintf("src%dl%d", i, k)
				if k == 0 {
					node = top
				}
				srcs = append(srcs, map[string]any{"node": node, "name": req.Since})
			}
			tmp := "autosnap-tmp-merge"
			if _, err := q.run(ctx, "block-dirty-bitmap-add", map[string]any{"node": top, "name": tmp, "persistent": false, "disabled": true}); err != nil {
				return fail(fmt.Errorf("disk %s: %w", j.t.Disk, err))
			}
			if _, err := q.run(ctx, "block-dirty-bitmap-merge", map[string]any{"node": top, "target": tmp, "bitmaps": srcs}); err != nil {
				return fail(fmt.Errorf("disk %s: merging the bitmaps of checkpoint %s: %w", j.t.Disk, req.Since, err))
			}
			bk["sync"], bk["bitmap"], bk["bitmap-mode"] = "bitmap", tmp, "never"
		}
		if j.bitmap {
			actions = append(actions, map[string]any{"type": "block-dirty-bitmap-add",
				"data": map[string]any{"node": top, "name": req.Checkpoint, "persistent": true}})
		}
		actions = append(actions, map[string]any{"type": "blockdev-backup", "data": bk})
	}
	instant := time.Now().UTC()
	if _, err := q.run(ctx, "transaction", map[string]any{"actions": actions}); err != nil {
		return fail(fmt.Errorf("starting the copy: %w", err))
	}
	if err := waitQSDJobs(ctx, q, len(jobs), req.Progress); err != nil {
		return fail(err)
	}
	if err := q.quit(ctx); err != nil {
		return fail(err)
	}
	if req.Checkpoint != "" {
		withBitmap := map[string]bool{}
		for _, j := range jobs {
			withBitmap[j.t.Disk] = j.bitmap
		}
		if err := d.redefineCheckpoint(ctx, dom, req.Checkpoint, instant, withBitmap, disks); err != nil {
			for _, j := range jobs {
				if j.bitmap {
					_, _ = runCmd(context.Background(), "qemu-img", "bitmap", "--remove", j.file, req.Checkpoint)
				}
			}
			return driver.BackupResult{}, fmt.Errorf("guest %s (shut off): recording checkpoint %s in libvirt: %w", g.Name, req.Checkpoint, err)
		}
	}
	res := driver.BackupResult{Instant: instant, Bytes: map[string]uint64{}}
	for _, j := range jobs {
		n, err := qcow2.AllocatedBytes(ctx, j.t.File)
		if err != nil {
			return driver.BackupResult{}, fmt.Errorf("guest %s disk %s: %w", g.Name, j.t.Disk, err)
		}
		res.Bytes[j.t.Disk] = n
	}
	return res, nil
}

// waitQSDJobs waits until n backup jobs have concluded, reporting their combined
// progress, and fails with the first job's error.
func waitQSDJobs(ctx context.Context, q *qsd, n int, progress func(done, total uint64)) error {
	for {
		raw, err := q.run(ctx, "query-jobs", nil)
		if err != nil {
			return err
		}
		var js []struct {
			ID     string `json:"id"`
			Status string `json:"status"`
			Cur    uint64 `json:"current-progress"`
			Total  uint64 `json:"total-progress"`
			Error  string `json:"error"`
		}
		if err := json.Unmarshal(raw, &js); err != nil {
			return fmt.Errorf("query-jobs: %w", err)
		}
		var done, total uint64
		concluded := 0
		var errs []string
		for _, j := range js {
			done += j.Cur
			total += j.Total
			if j.Status == "concluded" || j.Status == "null" {
				concluded++
				if j.Error != "" {
					errs = append(errs, j.ID+": "+j.Error)
				}
			}
		}
		if progress != nil {
			progress(done, total)
		}
		if concluded >= n {
			for _, j := range js {
				_, _ = q.run(ctx, "job-dismiss", map[string]any{"id": j.ID})
			}
			if len(errs) > 0 {
				return fmt.Errorf("the copy failed: %s (check free space where the backup is written)", strings.Join(errs, "; "))
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("backup stopped: %w", ctx.Err())
		case <-time.After(backupPoll):
		}
	}
}

// redefineCheckpoint records in libvirt a checkpoint whose bitmaps autosnap created
// itself in the images of a shut-off guest. bitmap maps each disk of the backup to
// whether it got a bitmap; the guest's other disks are recorded without one.
func (d *Driver) redefineCheckpoint(ctx context.Context, dom golibvirt.Domain, name string, at time.Time, bitmap map[string]bool, disks map[string]*libvirtxml.DomainDisk) error {
	cfg, err := call(ctx, func() (string, error) {
		return d.l.DomainGetXMLDesc(dom, golibvirt.DomainXMLInactive|golibvirt.DomainXMLSecure)
	})
	if err != nil {
		return err
	}
	cx := checkpointXML{Name: name, Description: "autosnap backup checkpoint (shut-off guest)", CreationTime: at.Unix()}
	for _, dk := range backupDisksSorted(disks) {
		if bitmap[dk] {
			cx.Disks = append(cx.Disks, checkpointDiskXML{Name: dk, Checkpoint: "bitmap", Bitmap: name})
		} else {
			cx.Disks = append(cx.Disks, checkpointDiskXML{Name: dk, Checkpoint: "no"})
		}
	}
	b, err := xml.Marshal(cx)
	if err != nil {
		return err
	}
	// libvirt wants the domain definition of the checkpoint's instant inside it.
	s := strings.Replace(string(b), "</domaincheckpoint>", cfg+"</domaincheckpoint>", 1)
	_, err = call(ctx, func() (golibvirt.DomainCheckpoint, error) {
		return d.l.DomainCheckpointCreateXML(dom, s, uint32(golibvirt.DomainCheckpointCreateRedefine))
	})
	return err
}

func backupDisksSorted(disks map[string]*libvirtxml.DomainDisk) []string {
	out := make([]string, 0, len(disks))
	for k := range disks {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
