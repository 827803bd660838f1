package libvirt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/driver"
)

// buildGraphs makes each disk's image graph from the domain's chains, every snapshot's
// metadata and, on the local host, the images' own headers, including images in the
// same directories that build on one of them (branches libvirt does not know), and
// what else on the host uses each image (see hostUsers). It is called after settle,
// so the metadata names no file an interrupted merge removed.
//
// Files are told apart by identity (device and inode) on the local host: a path
// through a symlinked directory or a bind mount is the same image as its resolved
// path. Each graph node is keyed by the first path seen for its file — the path in
// the domain's chain when the file is in it, which live block jobs must be given —
// and buildGraphs rewrites t's paths (each snapshot's overlays and states and the
// disk sources of its recorded domain definitions) to those keys, so callers can
// compare files as strings.
//
// A missing file is an error, never "already merged": an image of a chain, a
// snapshot's state image, a backing file named in a header. The only file that may
// be gone is the overlay of a snapshot no snapshot uses as its state: a revert
// deletes the discarded current image, which is such an overlay, and leaves the
// metadata naming it (see RevertSnapshotNotes); its content is nobody's point in
// time, so it is left out of the graph.
//
// An image's content may change (it is mergeable) when no remaining snapshot needs it
// as its state and it held the state of a snapshot that is gone: the state image of a
// deleted snapshot, an overlay autosnap created, and the image such an overlay was
// created on. The last two also cover what the metadata no longer tells: a snapshot
// deleted while its state image had other overlays (a revert branched it) leaves no
// record that the image is free, and the overlay left on it (a revert overlay, or the
// snapshot's own) must still be merged into it once nothing else builds on it, so that
// the chain shrinks back to its base when the last snapshot goes. Overlays autosnap
// created are those the snapshots name and the files named as autosnap names snapshot
// and revert overlays of the disk ("<dom>-<disk>.<name>.qcow2", see overlayPath and
// revertOverlayName).
//
// It also refuses, changing nothing, when the merge would write into or remove an
// image that something outside the guest's disk uses (another guest, a file in a
// storage pool or beside the images).
func (d *Driver) buildGraphs(ctx context.Context, g driver.Guest, dom golibvirt.Domain, t *snapTree, deleted map[string]bool) (map[string]*diskGraph, error) {
	chains, active, err := d.chains(ctx, dom)
	if err != nil {
		return nil, fmt.Errorf("guest %s: %w", g.Name, err)
	}
	in := graphInput{guest: g.Name, domain: dom.Name, uuid: formatUUID(dom.UUID), chains: chains, live: active, tree: t, deleted: deleted,
		fs: d.imageFS(), users: func() (*hostUsers, error) { return d.hostUsers(ctx) }}
	graphs, err := in.build()
	if err != nil {
		return nil, err
	}
	if err := in.refuseShared(graphs); err != nil {
		return nil, err
	}
	return graphs, nil
}

// graphInput is everything a guest's image graphs are built from: libvirt's chains
// and snapshot metadata, the image files (nil fs: autosnap does not run on the
// libvirt host) and the host-wide scan of image users.
type graphInput struct {
	guest   string // for messages
	domain  string // the libvirt domain's name, which autosnap's overlay file names start with
	uuid    string // the domain's UUID: its own disk is not another user of its images
	chains  map[string][]string
	live    bool // the domain is active: its chains' images are open in QEMU
	tree    *snapTree
	deleted map[string]bool
	fs      imageFS
	users   func() (*hostUsers, error) // nil: no scan
}

// build is buildGraphs without libvirt and without the refusal of shared images (see
// refuseShared): every image something outside uses is marked, so the planner leaves
// it alone.
func (in graphInput) build() (map[string]*diskGraph, error) {
	keys := newKeyer(in.fs)
	// Only disks a snapshot covers have anything to release; the others (a CD-ROM
	// whose ISO is gone) are none of the planner's business.
	covered := map[string]bool{}
	for _, m := range in.tree.byName {
		for disk := range m.overlays {
			covered[disk] = true
		}
	}
	graphs := map[string]*diskGraph{}
	for _, disk := range sortedKeys(in.chains) {
		chain := in.chains[disk]
		if !covered[disk] {
			continue
		}
		gr := newDiskGraph(disk)
		ks := make([]string, len(chain))
		for i, f := range chain {
			k, err := keys.key(f)
			if err != nil {
				return nil, fmt.Errorf("guest %s: disk %s: the image %s of the disk's current chain %w; the guest's disk is broken: check `autosnap snapshot chain %s` and restore the file", in.guest, disk, f, err, in.guest)
			}
			ks[i] = k
		}
		gr.active = ks[0]
		for i, k := range ks {
			n := &imgNode{live: in.live}
			if i+1 < len(ks) {
				n.backing = ks[i+1]
			}
			gr.nodes[k] = n
		}
		graphs[disk] = gr
	}
	t := in.tree
	// owned: overlays snapshots created; released: state images of deleted snapshots.
	owned, released := map[string][]string{}, map[string][]string{}
	for _, name := range t.order {
		m, ok := t.byName[name]
		if !ok {
			continue
		}
		for _, disk := range sortedKeys(m.overlays) {
			ov := m.overlays[disk]
			gr, ok := graphs[disk]
			if !ok {
				if in.deleted[name] {
					return nil, fmt.Errorf("guest %s: snapshot %s covers disk %s, which the guest no longer has; refusing to merge (delete the snapshot with --metadata after checking its files)", in.guest, name, disk)
				}
				continue
			}
			st := m.states[disk]
			if st != "" {
				k, err := keys.key(st)
				if err != nil {
					return nil, fmt.Errorf("guest %s: disk %s: snapshot %s names %s as its state image, which %w; refusing to merge anything on this disk (check `autosnap snapshot chain %s`, then fix the snapshot with `snapshot dumpxml` + `snapshot redefine`, or forget it with `snapshot delete --metadata`)", in.guest, disk, name, st, err, in.guest)
				}
				m.states[disk], st = k, k
			}
			ovKey, err := keys.key(ov)
			if errors.Is(err, errMissing) && keys.local() && !usedAsState(t, disk, ov) {
				ovKey = "" // discarded by a revert: see buildGraphs
			} else if err != nil {
				return nil, fmt.Errorf("guest %s: disk %s: snapshot %s names %s as its overlay, which %w; refusing to merge anything on this disk (check `autosnap snapshot chain %s`, then fix the snapshot with `snapshot dumpxml` + `snapshot redefine`, or forget it with `snapshot delete --metadata`)", in.guest, disk, name, ov, err, in.guest)
			} else {
				m.overlays[disk] = ovKey
			}
			if ovKey != "" {
				owned[disk] = append(owned[disk], ovKey)
			}
			if in.deleted[name] {
				if ovKey != "" {
					gr.removable[ovKey] = true
				}
				if st != "" {
					gr.mergeable[st] = true
					released[disk] = append(released[disk], st)
				}
			} else if st != "" {
				gr.pins[st] = append(gr.pins[st], name)
			}
			for _, f := range []string{ovKey, st} {
				if f == "" {
					continue
				}
				if err := in.addImage(keys, gr, f, ovKey, st); err != nil {
					return nil, fmt.Errorf("guest %s: disk %s: %w", in.guest, disk, err)
				}
			}
		}
		canonicalDomainDisks(m, keys)
	}
	for disk, gr := range graphs {
		// An overlay autosnap created that no remaining snapshot needs as its state may
		// absorb the image above it (left over by an earlier delete at a branch point),
		// and so may the image it was created on: that was a snapshot's state, and the
		// snapshot is gone. A released state image nobody builds on any more is removed.
		made := map[string]bool{}
		for _, ov := range owned[disk] {
			made[ov] = true
		}
		for f := range gr.nodes {
			if isOwnOverlay(f, in.domain, disk) {
				made[f] = true
			}
		}
		for f := range made {
			if len(gr.pins[f]) == 0 {
				gr.mergeable[f] = true
			}
			if b := gr.nodes[f].backing; b != "" && len(gr.pins[b]) == 0 {
				if _, ok := gr.nodes[b]; ok {
					gr.mergeable[b] = true
				}
			}
		}
		for _, st := range released[disk] {
			if n, ok := gr.nodes[st]; ok && n.backing != "" && len(gr.pins[st]) == 0 {
				gr.removable[st] = true
			}
		}
	}
	if in.fs != nil {
		for _, disk := range sortedKeys(graphs) {
			gr := graphs[disk]
			addBranches(in.fs, keys, gr)
			for f, n := range gr.nodes {
				if n.foreign {
					continue // never written or removed anyway
				}
				internal, err := in.fs.InternalSnapshots(f)
				if err != nil {
					return nil, fmt.Errorf("guest %s: disk %s: %w", in.guest, gr.disk, err)
				}
				n.protected = internal
			}
		}
	}
	if in.users != nil && len(graphs) > 0 {
		hu, err := in.users()
		if err != nil {
			return nil, fmt.Errorf("guest %s: cannot tell whether other guests or files use this guest's images: %w; nothing was changed (try again)", in.guest, err)
		}
		for _, gr := range graphs {
			hu.attach(gr, keys, in.uuid)
		}
	}
	return graphs, nil
}

// refuseShared fails when releasing what the deleted snapshots hold would write into
// or remove an image that something outside the guest uses.
func (in graphInput) refuseShared(graphs map[string]*diskGraph) error {
	for _, disk := range sortedKeys(graphs) {
		if err := graphs[disk].refuseShared(in.guest, in.deletedOn(disk)); err != nil {
			return err
		}
	}
	return nil
}

// isOwnOverlay reports whether path is named as autosnap names the overlays it
// creates on disk of dom: a snapshot's ("<dom>-<disk>.<snap>.qcow2") or a revert's
// ("<dom>-<disk>.<snap>.revert<N>.qcow2"), also as named before guest names were made
// safe for file names. An empty dom matches nothing.
func isOwnOverlay(path, dom, disk string) bool {
	if dom == "" {
		return false
	}
	base := filepath.Base(path)
	for _, prefix := range []string{safeFileName(dom) + "-" + safeFileName(disk) + ".", dom + "-" + disk + "."} {
		if rest, ok := strings.CutPrefix(base, prefix); ok && len(rest) > len(".qcow2") && strings.HasSuffix(rest, ".qcow2") {
			return true
		}
	}
	return false
}

// usedAsState reports whether a snapshot of t records ov as its state on disk.
func usedAsState(t *snapTree, disk, ov string) bool {
	for _, n := range t.order {
		if st := t.byName[n].states[disk]; st == ov {
			return true
		}
	}
	return false
}

// deletedOn lists the deleted snapshots that cover disk.
func (in graphInput) deletedOn(disk string) []string {
	var out []string
	for _, n := range in.tree.order {
		if m := in.tree.byName[n]; in.deleted[n] && m != nil && m.overlays[disk] != "" {
			out = append(out, n)
		}
	}
	return out
}

// canonicalDomainDisks rewrites the file sources of m's recorded domain definitions
// to the graph keys of their files, so that the paths recorded there compare equal
// to the planner's.
func canonicalDomainDisks(m *snapMeta, keys *keyer) {
	if m.x == nil {
		return
	}
	for _, dm := range []*libvirtxml.Domain{m.x.Domain, inactiveOf(m.x)} {
		if dm == nil || dm.Devices == nil {
			continue
		}
		for i := range dm.Devices.Disks {
			if src := dm.Devices.Disks[i].Source; src != nil && src.File != nil {
				if k, ok := keys.lookup(src.File.File); ok {
					src.File.File = k
				}
			}
		}
	}
}

// addImage puts f and the images below it into gr. On the local host the files say
// what their backing files are; remotely the metadata does (an overlay sits on its
// snapshot's state image). A backing file that does not exist is an error.
func (in graphInput) addImage(keys *keyer, gr *diskGraph, f, overlay, state string) error {
	for seen := 0; f != ""; seen++ {
		if _, ok := gr.nodes[f]; ok {
			return nil
		}
		if seen > maxChainDepth {
			return fmt.Errorf("%s: the backing chain is longer than %d images (a loop?)", f, maxChainDepth)
		}
		if in.fs == nil {
			n := &imgNode{}
			if f == overlay {
				n.backing = state
			}
			gr.nodes[f] = n
			f = n.backing
			continue
		}
		b, err := in.fs.Backing(f)
		if err != nil {
			return fmt.Errorf("reading the header of %s: %w", f, err)
		}
		if b != "" && !isLocalPath(b) {
			b = "" // a network image: nothing on this host to look at
		}
		if b != "" {
			k, err := keys.key(b)
			if err != nil {
				return fmt.Errorf("%s names %s as its backing file, which %w; the image is broken (restore the file, or check with qemu-img info --backing-chain %s)", f, b, err, f)
			}
			b = k
		}
		gr.nodes[f] = &imgNode{backing: b}
		f = b
	}
	return nil
}

// maxChainDepth bounds header walks, so a loop of backing files cannot hang a run.
const maxChainDepth = 256

// addBranches adds the qcow2 images in the graph's directories whose backing file is
// in the graph: another branch or another guest building on one of our images. They
// are foreign: the planner never writes or removes them, nor the images they need.
func addBranches(fs imageFS, keys *keyer, gr *diskGraph) {
	dirs := map[string]bool{}
	for f := range gr.nodes {
		dirs[filepath.Dir(f)] = true
	}
	for _, dir := range sortedKeys(dirs) {
		files, _ := fs.List(dir)
		for _, f := range files {
			if k, ok := keys.lookup(f); ok {
				if _, in := gr.nodes[k]; in {
					continue
				}
			}
			b, err := fs.Backing(f)
			if err != nil || b == "" || !isLocalPath(b) {
				continue
			}
			bk, ok := keys.lookup(b)
			if !ok {
				continue
			}
			if _, in := gr.nodes[bk]; !in {
				continue
			}
			k, err := keys.key(f)
			if err != nil {
				continue // gone since the listing
			}
			gr.nodes[k] = &imgNode{backing: bk, foreign: true}
		}
	}
}

// errMissing is wrapped by keyer.key for a file that does not exist.
var errMissing = errors.New("does not exist")

// keyer gives each image file one key: the first path seen for it. On the local host
// paths are compared by identity (device and inode); without a file system (remote)
// by string.
type keyer struct {
	fs   imageFS
	byID map[fileID]string
	ids  map[string]fileID // key -> identity
}

func newKeyer(fs imageFS) *keyer {
	return &keyer{fs: fs, byID: map[fileID]string{}, ids: map[string]fileID{}}
}

func (k *keyer) local() bool { return k.fs != nil }

// key returns the key of the file path names, making path the key if the file is
// new. It fails when the file does not exist (wrapping errMissing) or cannot be
// examined.
func (k *keyer) key(path string) (string, error) {
	if k.fs == nil {
		return path, nil
	}
	id, ok, err := k.fs.Stat(path)
	if err != nil {
		return "", fmt.Errorf("cannot be examined: %w", err)
	}
	if !ok {
		return "", errMissing
	}
	if key, ok := k.byID[id]; ok {
		return key, nil
	}
	k.byID[id] = path
	k.ids[path] = id
	return path, nil
}

// lookup returns the key of an already known file.
func (k *keyer) lookup(path string) (string, bool) {
	if k.fs == nil {
		return path, true
	}
	id, ok, err := k.fs.Stat(path)
	if err != nil || !ok {
		return "", false
	}
	key, ok := k.byID[id]
	return key, ok
}

// id returns the identity of a key, when it is a local file.
func (k *keyer) id(key string) (fileID, bool) {
	id, ok := k.ids[key]
	return id, ok
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// qcow2Backing reads an image's backing file from its qcow2 header, resolved against
// the image's directory. ok is false when the file does not exist; a file that is not
// qcow2 has no backing file.
func qcow2Backing(path string) (backing string, ok bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", false, nil
		}
		return "", false, err
	}
	defer f.Close()
	var hdr [20]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil || !bytes.Equal(hdr[:4], []byte{'Q', 'F', 'I', 0xfb}) {
		return "", true, nil
	}
	off := binary.BigEndian.Uint64(hdr[8:16])
	size := binary.BigEndian.Uint32(hdr[16:20])
	if off == 0 || size == 0 {
		return "", true, nil
	}
	if size > 4096 {
		return "", true, fmt.Errorf("%s: implausible backing file name length %d", path, size)
	}
	name := make([]byte, size)
	if _, err := f.ReadAt(name, int64(off)); err != nil {
		return "", true, fmt.Errorf("%s: reading the backing file name: %w", path, err)
	}
	b := string(name)
	if !filepath.IsAbs(b) && !strings.Contains(b, ":") {
		b = filepath.Join(filepath.Dir(path), b)
	}
	return b, true, nil
}

// hasInternalSnapshots reports whether a qcow2 image holds internal snapshots (the
// header's snapshot count).
func hasInternalSnapshots(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, err
	}
	defer f.Close()
	var hdr [64]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil || !bytes.Equal(hdr[:4], []byte{'Q', 'F', 'I', 0xfb}) {
		return false, nil
	}
	return binary.BigEndian.Uint32(hdr[60:64]) > 0, nil
}
