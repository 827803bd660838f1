package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
)

// CheckpointPrefix starts the name of every checkpoint of autosnap's, and of the
// persistent dirty bitmap that holds it in each disk's image. Bitmaps without it
// belong to someone else (qmpbackup-…, a user's) and are never used or removed,
// except qmpbackup's on explicit request (RemoveQMPBackupBitmaps).
const CheckpointPrefix = driver.CheckpointPrefix

// bkSuffix ends the name of a guest's backup sidecar, beside NAME.autosnap.json:
// checkpoints and the journal of a backup in progress.
const bkSuffix = ".autosnap-backup.json"

func (e entry) bkPath() string { return strings.TrimSuffix(e.meta, metaSuffix) + bkSuffix }

// bkFile is a guest's backup sidecar.
type bkFile struct {
	Version int `json:"version"`
	// Checkpoints are autosnap's checkpoints, oldest first: each is a persistent dirty
	// bitmap of its name on the format node of every disk in Disks, recording every
	// change since the checkpoint's instant.
	Checkpoints []bkCheckpoint `json:"checkpoints,omitempty"`
	// Pending journals a backup in progress: everything it adds to QEMU is listed here
	// before it is added, so a run that finds it (the backup's process died) removes
	// exactly that.
	Pending *bkPending `json:"pending,omitempty"`
	// RevertBitmaps journals the dirty bitmaps a revert removes before it reverts
	// (QEMU reverts no disk that carries any), listed before the first is removed.
	RevertBitmaps []bkBitmapRef `json:"revert_bitmaps,omitempty"`
}

type bkCheckpoint struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	Disks   []string  `json:"disks"`
	// Reverted, when set, says why the checkpoint is unusable: the guest was reverted
	// to a snapshot since, and its bitmaps were removed.
	Reverted string `json:"reverted,omitempty"`
}

type bkPending struct {
	// Checkpoint is the checkpoint the backup creates; its bitmaps go with an
	// unfinished backup.
	Checkpoint string    `json:"checkpoint,omitempty"`
	Started    time.Time `json:"started"`
	// Stopped is set before autosnap stops the guest's CPUs for the instant of a
	// multi-disk backup, cleared once they run again.
	Stopped bool            `json:"stopped,omitempty"`
	Disks   []bkPendingDisk `json:"disks"`
}

// bkPendingDisk is what one disk's backup adds to QEMU.
type bkPendingDisk struct {
	Disk string `json:"disk"`
	Qdev string `json:"qdev"` // the device whose drive the CBW filter replaces
	Node string `json:"node"` // the disk's format node (the drive before the switch)
	Job  string `json:"job"`
	// Node names added, in order: the target, the fleecing image, the
	// copy-before-write filter and the snapshot-access node.
	Target     string `json:"target"`
	Fleece     string `json:"fleece"`
	CBW        string `json:"cbw"`
	Snap       string `json:"snap"`
	FleeceFile string `json:"fleece_file"`
}

func readBk(e entry) (*bkFile, error) {
	b, err := os.ReadFile(e.bkPath())
	if errors.Is(err, os.ErrNotExist) {
		return &bkFile{Version: 1}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("guest %s: %w", e.name, err)
	}
	f := &bkFile{}
	if err := json.Unmarshal(b, f); err != nil {
		return nil, fmt.Errorf("guest %s: backup sidecar %s is damaged (%v): move it away (its checkpoints are then forgotten and the next backup is a full)", e.name, e.bkPath(), err)
	}
	return f, nil
}

// writeBk replaces the backup sidecar atomically (0600).
func writeBk(e entry, f *bkFile) error {
	f.Version = 1
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	path := e.bkPath()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".autosnap-bk-*")
	if err != nil {
		return fmt.Errorf("guest %s: writing backup sidecar %s: %w", e.name, path, err)
	}
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("guest %s: writing backup sidecar %s: %w", e.name, path, err)
	}
	return nil
}

func (f *bkFile) checkpoint(name string) (int, bool) {
	for i, c := range f.Checkpoints {
		if c.Name == name {
			return i, true
		}
	}
	return -1, false
}

// qbitmap is a dirty bitmap as query-block reports it.
type qbitmap struct {
	Name         string `json:"name"`
	Recording    bool   `json:"recording"`
	Persistent   bool   `json:"persistent"`
	Busy         bool   `json:"busy"`
	Inconsistent bool   `json:"inconsistent"`
	Granularity  uint64 `json:"granularity"`
	Count        uint64 `json:"count"`
}

// flags are a bitmap's state in qemu-img's words (auto = recording, in-use =
// inconsistent), plus persistent/transient and busy.
func (b qbitmap) flags() []string {
	var out []string
	if b.Recording {
		out = append(out, "auto")
	}
	if b.Inconsistent {
		out = append(out, "in-use")
	}
	if b.Busy {
		out = append(out, "busy")
	}
	if !b.Persistent {
		out = append(out, "transient")
	}
	return out
}

// unusable says why changes since bitmap name cannot be read from bms, or "".
func unusable(bms []qbitmap, name string) string {
	for _, b := range bms {
		if b.Name != name {
			continue
		}
		switch {
		case b.Inconsistent:
			return "bitmap " + name + " is inconsistent (QEMU did not close the image cleanly: killed, crashed or power lost)"
		case !b.Recording:
			return "bitmap " + name + " is not recording (disabled by someone else)"
		}
		return ""
	}
	return "bitmap " + name + " is missing (the image was replaced, or QEMU was restarted and the bitmap was not stored in the image)"
}

// bkDisk is one writable disk of a guest as a backup sees it.
type bkDisk struct {
	Name    string
	Qdev    string
	Node    string // the drive's root node: the format node
	Drv     string // its driver (qcow2, raw, or a filter's)
	File    string
	Size    uint64
	Bitmaps []qbitmap
}

// bkDisks lists the running guest's writable disks with their bitmaps, named as
// queryDisks names them (drive id, else qdev id, else node name).
func bkDisks(ctx context.Context, s *session) ([]bkDisk, error) {
	var bs []blockInfo
	if err := s.m.Execute(ctx, "query-block", nil, &bs); err != nil {
		return nil, fmt.Errorf("guest %s: query-block: %w", s.e.name, err)
	}
	var out []bkDisk
	for _, b := range bs {
		in := b.Inserted
		if in == nil || in.RO {
			continue
		}
		name := b.Device
		if name == "" {
			name = qdevName(b.Qdev)
		}
		if name == "" {
			name = in.NodeName
		}
		file := in.Image.Filename
		if file == "" {
			file = in.File
		}
		out = append(out, bkDisk{Name: name, Qdev: b.Qdev, Node: in.NodeName, Drv: in.Drv, File: file, Size: in.Image.VirtualSize, Bitmaps: in.Bitmaps})
	}
	return out, nil
}

// offlineDisks reads a stopped guest's writable disks (as the sidecar last recorded
// them) and their persistent bitmaps from the images.
func offlineDisks(ctx context.Context, m *meta) ([]bkDisk, error) {
	var out []bkDisk
	for _, x := range m.Disks {
		if x.ReadOnly {
			continue
		}
		bd := bkDisk{Name: x.Name, Node: x.Node, Drv: x.Format, File: x.File}
		info, err := qemuImgInfo(ctx, x.File)
		if err != nil {
			return nil, fmt.Errorf("disk %s: %w", x.Name, err)
		}
		bd.Size = info.VirtualSize
		for _, b := range info.Spec.Data.Bitmaps {
			bd.Bitmaps = append(bd.Bitmaps, qbitmap{Name: b.Name, Granularity: b.Granularity, Persistent: true,
				Recording: slices.Contains(b.Flags, "auto"), Inconsistent: slices.Contains(b.Flags, "in-use")})
		}
		out = append(out, bd)
	}
	return out, nil
}

type imgInfo struct {
	VirtualSize uint64 `json:"virtual-size"`
	Format      string `json:"format"`
	Spec        struct {
		Data struct {
			Bitmaps []struct {
				Name        string   `json:"name"`
				Granularity uint64   `json:"granularity"`
				Flags       []string `json:"flags"`
			} `json:"bitmaps"`
		} `json:"data"`
	} `json:"format-specific"`
}

func qemuImgInfo(ctx context.Context, file string) (imgInfo, error) {
	out, err := runTool(ctx, "qemu-img", "info", "-U", "--output=json", file)
	if err != nil {
		return imgInfo{}, err
	}
	var info imgInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return imgInfo{}, fmt.Errorf("qemu-img info %s: unreadable output: %w", file, err)
	}
	return info, nil
}

// checkpoints lists the sidecar's checkpoints with their usability judged from the
// disks' bitmaps.
func checkpoints(f *bkFile, ds []bkDisk) []driver.Checkpoint {
	byName := map[string]bkDisk{}
	for _, d := range ds {
		byName[d.Name] = d
	}
	out := make([]driver.Checkpoint, 0, len(f.Checkpoints))
	for _, c := range f.Checkpoints {
		cp := driver.Checkpoint{Name: c.Name, Created: c.Created.UTC(), Disks: append([]string(nil), c.Disks...)}
		if c.Reverted != "" {
			cp.Unusable = c.Reverted
			out = append(out, cp)
			continue
		}
		var why []string
		for _, dn := range c.Disks {
			d, ok := byName[dn]
			if !ok {
				why = append(why, "disk "+dn+" is no longer attached")
				continue
			}
			if w := unusable(d.Bitmaps, c.Name); w != "" {
				why = append(why, "disk "+dn+": "+w)
			}
		}
		cp.Unusable = strings.Join(why, "; ")
		out = append(out, cp)
	}
	return out
}
