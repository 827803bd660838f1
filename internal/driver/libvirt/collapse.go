package libvirt

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/autosnap/autosnap/internal/crash"
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
		// Snapshots are matched to images by identity on the local host: the metadata
		// may name an image through another path than the chain.
		keys := newKeyer(d.imageFS())
		for _, f := range c.Images {
			_, _ = keys.key(f)
		}
		holders := map[string][]string{}
		for _, n := range t.order {
			if st := t.byName[n].states[c.Disk]; st != "" {
				if k, ok := keys.lookup(st); ok {
					st = k
				}
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
// when opts.Disk is "") is merged into the chain's bottom image in one job — a live
// active commit and pivot for a running guest, qemu-img commit for a shut-off one —
// and the overlays are deleted. It first settles what an interrupted run left (see
// settle), under the guest's lock.
//
// It refuses, changing nothing:
//   - while any snapshot still needs an image of the chain (delete those snapshots, or
//     their metadata, first), while another image beside the chain's builds on one of
//     them, or while an overlay holds internal snapshots;
//   - when autosnap did not create the bottom image (it is no snapshot's overlay and
//     no revert overlay "<dom>-<disk>.<snap>.revert<N>.qcow2"), unless opts.ForceBase
//     names it: the bottom image is written, and it may be a template other guests
//     build on. The error names the flag to add. ForceBase entries that name no bottom
//     image of the disks being collapsed are an error;
//   - even with ForceBase, when anything else on the host uses an image of the chain:
//     another guest's disk, a storage pool volume or a file beside it (see hostUsers);
//   - over a remote connection (no access to the host's files), unless ForceBase
//     names the bottom image and the scan through libvirt finds no other user; the
//     error says what could not be checked.
//
// Files are compared by identity (device and inode) on the local host.
func (d *Driver) CollapseChain(ctx context.Context, g driver.Guest, opts driver.CollapseOptions) error {
	dom, t, unlock, err := d.settledTree(ctx, g)
	if err != nil {
		return err
	}
	defer unlock()
	chains, active, err := d.chains(ctx, dom)
	if err != nil {
		return fmt.Errorf("guest %s: %w", g.Name, err)
	}
	var disks []string
	if opts.Disk != "" {
		if _, ok := chains[opts.Disk]; !ok {
			return fmt.Errorf("guest %s has no disk %q: %w", g.Name, opts.Disk, driver.ErrNotFound)
		}
		disks = []string{opts.Disk}
	} else {
		disks = sortedKeys(chains)
	}
	fs := d.imageFS()
	keys := newKeyer(fs)
	keyed := map[string][]string{}
	var bottoms []string
	for _, k := range disks {
		if len(chains[k]) == 1 {
			// Nothing to collapse; forcing its only image is harmless.
			if key, err := keys.key(chains[k][0]); err == nil {
				bottoms = append(bottoms, key)
			}
			continue
		}
		for _, f := range chains[k] {
			key, err := keys.key(f)
			if err != nil {
				return fmt.Errorf("guest %s: disk %s: the image %s of the disk's chain %w; nothing was changed (check `autosnap snapshot chain %s`)", g.Name, k, f, err, g.Name)
			}
			keyed[k] = append(keyed[k], key)
		}
		if c := keyed[k]; len(c) > 0 {
			bottoms = append(bottoms, c[len(c)-1])
		}
	}
	forced, err := forcedBases(keys, opts.ForceBase, bottoms)
	if err != nil {
		return fmt.Errorf("guest %s: %w", g.Name, err)
	}
	created := map[string]bool{}
	for _, n := range t.order {
		for _, ov := range t.byName[n].overlays {
			if key, ok := keys.lookup(ov); ok {
				created[key] = true
			}
		}
	}
	var users *hostUsers
	var steps []mergeStep
	for _, k := range disks {
		chain := keyed[k]
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
			st, _ := keys.lookup(m.states[k])
			ov, _ := keys.lookup(m.overlays[k])
			// Internal snapshots in the bottom image survive; the headers show the others.
			if in[st] || in[ov] || (m.location != driver.LocationExternal && fs == nil) {
				need = append(need, n)
			}
		}
		if len(need) > 0 {
			return fmt.Errorf("guest %s: disk %s: snapshots %s still need images of the chain; delete them first (autosnap snapshot delete), or forget them with chain collapse --forget-snapshots", g.Name, k, strings.Join(need, ", "))
		}
		gr := newDiskGraph(k)
		for i, f := range chain {
			n := &imgNode{}
			if i+1 < len(chain) {
				n.backing = chain[i+1]
			}
			gr.nodes[f] = n
		}
		base := chain[len(chain)-1]
		if fs != nil {
			addBranches(fs, keys, gr)
			for f, n := range gr.nodes {
				if !in[f] {
					return fmt.Errorf("guest %s: disk %s: %s builds on %s of the chain; refusing to change it", g.Name, k, f, n.backing)
				}
			}
			for _, f := range chain[:len(chain)-1] {
				if internal, err := fs.InternalSnapshots(f); err != nil || internal {
					return fmt.Errorf("guest %s: disk %s: %s holds internal snapshots (or cannot be read: %v); refusing to merge it away", g.Name, k, f, err)
				}
			}
			if !forced[base] && !created[base] && !isRevertOverlay(base, dom.Name, k) {
				return fmt.Errorf("guest %s: disk %s: collapsing writes every overlay into the chain's bottom image %s, which autosnap did not create (it may be a template other guests build on); nothing was changed. If nothing but this guest uses it, say so: --force-base %s", g.Name, k, base, base)
			}
		} else if !forced[base] {
			return fmt.Errorf("guest %s: disk %s: collapsing writes every overlay into the chain's bottom image %s, and over a remote connection autosnap cannot prove that nothing else uses it: it cannot read which images the disks of shut-off guests build on, nor image files in no storage pool; nothing was changed. If nothing but this guest uses it, say so: --force-base %s", g.Name, k, base, base)
		}
		if users == nil {
			if users, err = d.hostUsers(ctx); err != nil {
				return fmt.Errorf("guest %s: disk %s: cannot tell whether other guests or files use the chain's images, so nothing was changed: %w", g.Name, k, err)
			}
		}
		users.attach(gr, keys, formatUUID(dom.UUID))
		for _, f := range chain {
			if us := gr.nodes[f].users; len(us) > 0 {
				what := "remove"
				if f == base {
					what = "write into"
				}
				return fmt.Errorf("guest %s: disk %s: collapsing would %s %s, which is also used by %s; nothing was changed (remove those users first if they do not need it as it is)", g.Name, k, what, f, strings.Join(us, ", "))
			}
		}
		steps = append(steps, mergeStep{kind: stepCommit, disk: k, base: base, top: chain[0],
			between: reversed(chain[1 : len(chain)-1]), live: active, activeTop: true})
	}
	if len(steps) == 0 {
		return nil
	}
	// Journalled like a delete, so that a collapse cut off anywhere (its block job
	// left running, qemu-img killed) is finished by the next run's settle.
	inChain := map[string]map[string]bool{}
	for _, st := range steps {
		inChain[st.disk] = map[string]bool{st.top: true}
	}
	rec := newMergeRecord(time.Now(), g.Name, formatUUID(dom.UUID), t, nil, nil, steps, inChain)
	rec.Op = "collapse"
	key := mergeKey(d.node, dom)
	if err := d.store().Put(key, rec); err != nil {
		return fmt.Errorf("guest %s: nothing was merged: the collapse could not be recorded first: %w (check that %s is writable)", g.Name, err, d.store().Dir)
	}
	started := map[string]bool{}
	progress := func(disk string, done, total uint64) {
		if !started[disk] {
			// The first report comes once the job runs: libvirt's block job
			// exists, or qemu-img commit is writing.
			started[disk] = true
			crash.Point(crash.CollapseStarted)
		}
		if opts.Progress != nil {
			opts.Progress(disk, done, total)
		}
	}
	if err := d.execute(ctx, g, dom, key, rec, progress); err != nil {
		return fmt.Errorf("guest %s: %w", g.Name, err)
	}
	return nil
}

// forcedBases resolves the ForceBase paths to the keys of the bottom images they
// name; one that names none of them is an error.
func forcedBases(keys *keyer, force, bottoms []string) (map[string]bool, error) {
	isBottom := map[string]bool{}
	for _, b := range bottoms {
		isBottom[b] = true
	}
	out := map[string]bool{}
	for _, p := range force {
		key, ok := keys.lookup(p)
		if !ok || !isBottom[key] {
			if keys.local() {
				if _, exists, err := keys.fs.Stat(p); err == nil && !exists {
					return nil, fmt.Errorf("--force-base %s: no such file", p)
				}
			}
			return nil, fmt.Errorf("--force-base %s is not the bottom image of a disk being collapsed (those are: %s); nothing was changed", p, strings.Join(bottoms, ", "))
		}
		out[key] = true
	}
	return out, nil
}

func reversed(xs []string) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[len(xs)-1-i] = x
	}
	return out
}
