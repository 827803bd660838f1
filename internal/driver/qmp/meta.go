package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	qc "github.com/autosnap/autosnap/internal/qmp"
)

// metaSuffix ends the name of a guest's sidecar file.
const metaSuffix = ".autosnap.json"

// metaPath is the sidecar of the guest whose QMP socket is sock: NAME.qmp →
// NAME.autosnap.json, any other name → NAME.EXT.autosnap.json.
func metaPath(sock string) string {
	return strings.TrimSuffix(sock, ".qmp") + metaSuffix
}

// meta is a guest's sidecar: what qcow2 internal snapshots cannot hold, and what
// autosnap needs to work on the guest while QEMU is not running.
type meta struct {
	Version int `json:"version"`
	// Disks are the guest's snapshot-able disks as QEMU last reported them.
	Disks []disk `json:"disks"`
	// Argv and Cwd are QEMU's command line as /proc showed it when autosnap last
	// connected; a revert that has to start the guest again runs it.
	Argv      []string `json:"argv,omitempty"`
	Cwd       string   `json:"cwd,omitempty"`
	LastState string   `json:"last_state,omitempty"`
	// Tags are the guest's autosnap tags (driver.Tagger).
	Tags    []string `json:"tags,omitempty"`
	Current string   `json:"current,omitempty"`
	// Reverting journals an offline revert in progress: the snapshot every disk is
	// being set to. The next run that finds QEMU stopped finishes it.
	Reverting string `json:"reverting,omitempty"`
	// Hidden are snapshots whose metadata was forgotten (DeleteSnapshotTree with
	// MetadataOnly): still inside the images, no longer listed.
	Hidden []string `json:"hidden,omitempty"`
	// Seq orders snapshots taken within the same clock tick.
	Seq       int64                `json:"seq"`
	Snapshots map[string]*snapMeta `json:"snapshots,omitempty"`
}

// snapMeta is what autosnap knows of one snapshot beyond the images.
type snapMeta struct {
	Description string    `json:"description"`
	Parent      string    `json:"parent,omitempty"`
	Consistency string    `json:"consistency,omitempty"`
	GuestState  string    `json:"guest_state,omitempty"`
	Created     time.Time `json:"created"`
	Seq         int64     `json:"seq"`
}

// disk is one block device of the guest.
type disk struct {
	Name     string `json:"name"`   // drive id, else qdev id, else node name
	Node     string `json:"node"`   // root node name (QMP commands address it)
	File     string `json:"file"`   // the top image file
	Format   string `json:"format"` // qcow2, raw, …
	ReadOnly bool   `json:"read_only,omitempty"`
}

func readMeta(path string) (*meta, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &meta{Version: 1, Snapshots: map[string]*snapMeta{}}, nil
	}
	if err != nil {
		return nil, err
	}
	m := &meta{}
	if err := json.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("sidecar %s is damaged (%v): move it away; autosnap rebuilds what it can on the next run", path, err)
	}
	if m.Snapshots == nil {
		m.Snapshots = map[string]*snapMeta{}
	}
	return m, nil
}

// writeMeta replaces the sidecar atomically (0600): a crash leaves the old or the new
// file, never a torn one.
func writeMeta(path string, m *meta) error {
	m.Version = 1
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".autosnap-meta-*")
	if err != nil {
		return fmt.Errorf("writing sidecar %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing sidecar %s: %w", path, err)
	}
	return nil
}

// peerPid is QEMU's pid from the socket's peer credentials; 0 when unknown.
func peerPid(m *qc.Monitor) int {
	uc, ok := m.Conn().(*net.UnixConn)
	if !ok {
		return 0
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0
	}
	var pid int
	raw.Control(func(fd uintptr) {
		if cred, err := syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED); err == nil {
			pid = int(cred.Pid)
		}
	})
	return pid
}

// blockInfo is the part of query-block autosnap reads (snapshots and backups).
type blockInfo struct {
	Device   string `json:"device"`
	Qdev     string `json:"qdev"`
	Inserted *struct {
		NodeName string `json:"node-name"`
		File     string `json:"file"`
		Drv      string `json:"drv"`
		RO       bool   `json:"ro"`
		Image    struct {
			Filename    string     `json:"filename"`
			Format      string     `json:"format"`
			VirtualSize uint64     `json:"virtual-size"`
			Snapshots   []snapInfo `json:"snapshots"`
		} `json:"image"`
		Bitmaps []qbitmap `json:"dirty-bitmaps"`
	} `json:"inserted"`
}

// snapInfo is QEMU's SnapshotInfo (query-block and qemu-img info alike).
type snapInfo struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	VMStateSize int64  `json:"vm-state-size"`
	DateSec     int64  `json:"date-sec"`
	DateNsec    int64  `json:"date-nsec"`
}

func (s snapInfo) date() time.Time { return time.Unix(s.DateSec, s.DateNsec) }

// qdevName is the id in a qdev path like /machine/peripheral/virtio-disk0/virtio-backend.
func qdevName(q string) string {
	rest, ok := strings.CutPrefix(q, "/machine/peripheral/")
	if !ok {
		return ""
	}
	id, _, _ := strings.Cut(rest, "/")
	return id
}

// queryDisks lists the guest's block devices with media, and each one's snapshots.
func queryDisks(ctx context.Context, s *session) ([]disk, [][]snapInfo, error) {
	var bs []blockInfo
	if err := s.m.Execute(ctx, "query-block", nil, &bs); err != nil {
		return nil, nil, fmt.Errorf("guest %s: query-block: %w", s.e.name, err)
	}
	var ds []disk
	var snaps [][]snapInfo
	for _, b := range bs {
		in := b.Inserted
		if in == nil {
			continue // an empty CD-ROM drive
		}
		name := b.Device
		if name == "" {
			name = qdevName(b.Qdev)
		}
		if name == "" {
			name = in.NodeName
		}
		format := in.Image.Format
		if format == "" {
			format = in.Drv
		}
		file := in.Image.Filename
		if file == "" {
			file = in.File
		}
		ds = append(ds, disk{Name: name, Node: in.NodeName, File: file, Format: format, ReadOnly: in.RO})
		snaps = append(snaps, in.Image.Snapshots)
	}
	return ds, snaps, nil
}

// record refreshes the sidecar from a running QEMU: its disks, command line and
// state. It returns the sidecar.
func (d *Driver) record(ctx context.Context, s *session) (*meta, error) {
	m, err := readMeta(s.e.meta)
	if err != nil {
		return nil, fmt.Errorf("guest %s: %w", s.e.name, err)
	}
	ds, _, err := queryDisks(ctx, s)
	if err != nil {
		return nil, err
	}
	old := *m
	m.Disks = ds
	m.LastState = string(s.state)
	if s.pid > 0 {
		if argv, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", s.pid)); err == nil && len(argv) > 0 {
			m.Argv = strings.Split(strings.TrimSuffix(string(argv), "\x00"), "\x00")
		}
		if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", s.pid)); err == nil {
			m.Cwd = cwd
		}
	}
	if !slices.Equal(old.Disks, m.Disks) || !slices.Equal(old.Argv, m.Argv) || old.Cwd != m.Cwd || old.LastState != m.LastState || !exists(s.e.meta) {
		if err := writeMeta(s.e.meta, m); err != nil {
			return nil, fmt.Errorf("guest %s: %w", s.e.name, err)
		}
	}
	return m, nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// snapDisks are the disks a snapshot covers: every writable disk. A read-only disk
// cannot change, so it needs no snapshot (QEMU's savevm skips it too). A writable disk
// whose format cannot hold internal snapshots fails the whole guest with the reason.
func snapDisks(name string, ds []disk) ([]disk, error) {
	var out []disk
	for _, x := range ds {
		if x.ReadOnly {
			continue
		}
		if x.Format != "qcow2" {
			return nil, fmt.Errorf("guest %s: disk %s (%s) is %s, which cannot hold internal snapshots; convert it to qcow2 (qemu-img convert -O qcow2) or attach it read-only: %w",
				name, x.Name, x.File, x.Format, driver.ErrUnsupported)
		}
		out = append(out, x)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("guest %s has no writable disk to snapshot: %w", name, driver.ErrUnsupported)
	}
	return out, nil
}

// trimmed is s without surrounding whitespace, for tool output in messages.
func trimmed(b []byte) string { return string(bytes.TrimSpace(b)) }
