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
	"strings"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/driver"
)

// buildGraphs makes each disk's image graph from the domain's chains, every snapshot's
// metadata and, on the local host, the images' own backing files, including images in
// the same directories that build on one of them (branches libvirt does not know).
func (d *Driver) buildGraphs(ctx context.Context, g driver.Guest, dom golibvirt.Domain, t *snapTree, deleted map[string]bool) (map[string]*diskGraph, error) {
	chains, active, err := d.chains(ctx, dom)
	if err != nil {
		return nil, fmt.Errorf("guest %s: %w", g.Name, err)
	}
	graphs := map[string]*diskGraph{}
	for disk, chain := range chains {
		gr := newDiskGraph(disk)
		gr.active = chain[0]
		for i, f := range chain {
			n := &imgNode{live: active}
			if i+1 < len(chain) {
				n.backing = chain[i+1]
			}
			gr.nodes[f] = n
		}
		graphs[disk] = gr
	}
	// owned: overlays snapshots created; released: state images of deleted snapshots.
	owned, released := map[string][]string{}, map[string][]string{}
	for _, name := range t.order {
		m, ok := t.byName[name]
		if !ok {
			continue
		}
		for disk, ov := range m.overlays {
			gr, ok := graphs[disk]
			if !ok {
				if deleted[name] {
					return nil, fmt.Errorf("guest %s: snapshot %s covers disk %s, which the guest no longer has; refusing to merge (delete the snapshot with --metadata after checking its files)", g.Name, name, disk)
				}
				continue
			}
			st := m.states[disk]
			owned[disk] = append(owned[disk], ov)
			if deleted[name] {
				gr.removable[ov] = true
				if st != "" {
					gr.mergeable[st] = true
					released[disk] = append(released[disk], st)
				}
			} else if st != "" {
				// A kept snapshot whose state image is gone (an earlier merge was cut
				// off before its metadata was updated) must stop all planning on this
				// disk: without the image the graph would look unshared and a merge
				// could overwrite the only other copy of that point in time.
				if d.local && !fileExists(st) {
					return nil, fmt.Errorf("guest %s: disk %s: snapshot %s names %s as its state, but that file is gone; refusing to merge anything on this disk (check `autosnap snapshot chain`, then fix the snapshot with `snapshot dumpxml` + `snapshot redefine`, or forget it with `snapshot delete --metadata`)", g.Name, disk, name, st)
				}
				gr.pins[st] = append(gr.pins[st], name)
			}
			for _, f := range []string{ov, st} {
				if f == "" {
					continue
				}
				if err := d.addImage(gr, f, ov, st); err != nil {
					return nil, fmt.Errorf("guest %s: disk %s: %w", g.Name, disk, err)
				}
			}
		}
	}
	for disk, gr := range graphs {
		// An overlay a snapshot created that no remaining snapshot needs as its state
		// may absorb the image above it (left over by an earlier delete at a branch
		// point). A released state image nobody builds on any more is removed.
		for _, ov := range owned[disk] {
			if len(gr.pins[ov]) == 0 {
				gr.mergeable[ov] = true
			}
		}
		for _, st := range released[disk] {
			if n, ok := gr.nodes[st]; ok && n.backing != "" && len(gr.pins[st]) == 0 {
				gr.removable[st] = true
			}
		}
	}
	if d.local {
		for _, gr := range graphs {
			addBranches(gr)
			for f, n := range gr.nodes {
				internal, err := hasInternalSnapshots(f)
				if err != nil {
					return nil, fmt.Errorf("guest %s: disk %s: %w", g.Name, gr.disk, err)
				}
				n.protected = internal
			}
		}
	}
	return graphs, nil
}

// addImage puts f and the images below it into gr. On the local host the files say
// what their backing files are; remotely the metadata does (an overlay sits on its
// snapshot's state image), and files that do not exist any more are left out.
func (d *Driver) addImage(gr *diskGraph, f, overlay, state string) error {
	for f != "" {
		if _, ok := gr.nodes[f]; ok {
			return nil
		}
		if !d.local {
			n := &imgNode{}
			if f == overlay {
				n.backing = state
			}
			gr.nodes[f] = n
			f = n.backing
			continue
		}
		b, ok, err := qcow2Backing(f)
		if err != nil {
			return err
		}
		if !ok {
			return nil // gone: merged away by an earlier delete
		}
		gr.nodes[f] = &imgNode{backing: b}
		f = b
	}
	return nil
}

// addBranches adds the qcow2 images in the graph's directories whose backing file is
// in the graph: another branch or another guest building on one of our images.
func addBranches(gr *diskGraph) {
	dirs := map[string]bool{}
	for f := range gr.nodes {
		dirs[filepath.Dir(f)] = true
	}
	for dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue // a block device's /dev, or unreadable: nothing to learn
		}
		for _, e := range entries {
			if !e.Type().IsRegular() {
				continue
			}
			f := filepath.Join(dir, e.Name())
			if _, ok := gr.nodes[f]; ok {
				continue
			}
			b, ok, err := qcow2Backing(f)
			if err != nil || !ok || b == "" {
				continue
			}
			if _, in := gr.nodes[b]; in {
				gr.nodes[f] = &imgNode{backing: b}
			}
		}
	}
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
