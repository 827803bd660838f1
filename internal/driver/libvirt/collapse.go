package libvirt

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/autosnap/autosnap/internal/driver"
)

// ChainDetails implements driver.ChainInspector. Sizes come from qemu-img info -U,
// which reads the images without locking them; on a remote host only file names are
// known and the sizes are 0.
func (d *Driver) ChainDetails(ctx context.Context, g driver.Guest) ([]driver.ChainDetail, error) {
	chains, err := d.Chains(ctx, g)
	if err != nil {
		return nil, err
	}
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return nil, err
	}
	t, err := d.loadTree(ctx, g, dom)
	if err != nil {
		return nil, err
	}
	out := make([]driver.ChainDetail, 0, len(chains))
	for _, c := range chains {
		holders := map[string][]string{}
		for _, n := range t.order {
			if st := t.byName[n].states[c.Disk]; st != "" {
				holders[st] = append(holders[st], n)
			}
		}
		var infos []sizedInfo
		if d.local && len(c.Images) > 0 {
			if infos, err = qemuImgSizes(ctx, c.Images[0]); err != nil {
				return nil, fmt.Errorf("guest %s: disk %s: %w", g.Name, c.Disk, err)
			}
		}
		det := driver.ChainDetail{Disk: c.Disk}
		for i, f := range c.Images {
			im := driver.ChainImage{File: f, Snapshots: holders[f]}
			if im.Snapshots == nil {
				im.Snapshots = []string{}
			}
			if i < len(infos) && infos[i].Filename == f {
				im.Format, im.VirtualSize, im.ActualSize = infos[i].Format, infos[i].VirtualSize, infos[i].ActualSize
			}
			det.Images = append(det.Images, im)
		}
		out = append(out, det)
	}
	return out, nil
}

type sizedInfo struct {
	Filename    string `json:"filename"`
	Format      string `json:"format"`
	VirtualSize uint64 `json:"virtual-size"`
	ActualSize  uint64 `json:"actual-size"`
}

func qemuImgSizes(ctx context.Context, path string) ([]sizedInfo, error) {
	out, err := runCmd(ctx, "qemu-img", "info", "--backing-chain", "-U", "--output=json", path)
	if err != nil {
		return nil, err
	}
	var infos []sizedInfo
	if err := json.Unmarshal(out, &infos); err != nil {
		return nil, fmt.Errorf("qemu-img info %s: unreadable output: %w", path, err)
	}
	return infos, nil
}

// CollapseChain implements driver.ChainCollapser: every overlay of the disk (all disks
// when disk is "") is merged into the chain's bottom image in one job — a live active
// commit and pivot for a running guest, qemu-img commit for a shut-off one — and the
// overlays are deleted. It refuses, changing nothing, while any snapshot still needs an
// image of the chain (delete those snapshots, or their metadata, first), while another
// image builds on one of the chain's images, or while an overlay holds internal
// snapshots. Merging writes into the bottom image: a base image shared with other
// guests (a template) must not be collapsed into.
func (d *Driver) CollapseChain(ctx context.Context, g driver.Guest, opts driver.CollapseOptions) error {
	disk, progress := opts.Disk, opts.Progress
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return err
	}
	unlock := d.domLock(g.Key())
	defer unlock()
	t, err := d.loadTree(ctx, g, dom)
	if err != nil {
		return err
	}
	chains, active, err := d.chains(ctx, dom)
	if err != nil {
		return fmt.Errorf("guest %s: %w", g.Name, err)
	}
	var disks []string
	if disk != "" {
		if _, ok := chains[disk]; !ok {
			return fmt.Errorf("guest %s has no disk %q: %w", g.Name, disk, driver.ErrNotFound)
		}
		disks = []string{disk}
	} else {
		for k := range chains {
			disks = append(disks, k)
		}
		sort.Strings(disks)
	}
	var steps []mergeStep
	for _, k := range disks {
		chain := chains[k]
		if len(chain) < 2 {
			continue
		}
		in := map[string]bool{}
		for _, f := range chain {
			in[f] = true
		}
		var need []string
		for _, n := range t.order {
			m := t.byName[n]
			// Internal snapshots in the bottom image survive; the headers show the others.
			if in[m.states[k]] || in[m.overlays[k]] || (m.location != driver.LocationExternal && !d.local) {
				need = append(need, n)
			}
		}
		if len(need) > 0 {
			return fmt.Errorf("guest %s: disk %s: snapshots %s still need images of the chain; delete them first (autosnap snapshot delete), or forget them with chain collapse --forget-snapshots", g.Name, k, strings.Join(need, ", "))
		}
		if d.local {
			gr := newDiskGraph(k)
			for i, f := range chain {
				n := &imgNode{}
				if i+1 < len(chain) {
					n.backing = chain[i+1]
				}
				gr.nodes[f] = n
			}
			addBranches(gr)
			for f, n := range gr.nodes {
				if !in[f] {
					return fmt.Errorf("guest %s: disk %s: %s builds on %s of the chain; refusing to change it", g.Name, k, f, n.backing)
				}
			}
			for _, f := range chain[:len(chain)-1] {
				if internal, err := hasInternalSnapshots(f); err != nil || internal {
					return fmt.Errorf("guest %s: disk %s: %s holds internal snapshots (or cannot be read: %v); refusing to merge it away", g.Name, k, f, err)
				}
			}
		}
		steps = append(steps, mergeStep{kind: stepCommit, disk: k, base: chain[len(chain)-1], top: chain[0],
			between: reversed(chain[1 : len(chain)-1]), live: active, activeTop: true})
	}
	for _, s := range steps {
		if err := d.runStep(ctx, g, dom, s, progress); err != nil {
			return fmt.Errorf("guest %s: %w", g.Name, err)
		}
	}
	return nil
}

func reversed(xs []string) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[len(xs)-1-i] = x
	}
	return out
}
