package libvirt

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"
)

// defaultScanTTL is how long a host-wide scan of image users is reused. A run that
// merges on many guests scans once, and one scan is never older than this: a linked
// clone defined within that window may be missed. A stale scan can only name users
// that are gone, which refuses a merge that would have been safe, never the reverse.
const defaultScanTTL = 2 * time.Minute

// graphState is the driver's state for image graphs.
type graphState struct {
	fs  imageFS          // nil: the local file system (tests inject a fake)
	now func() time.Time // nil: time.Now
	ttl time.Duration    // 0: defaultScanTTL

	mu     sync.Mutex
	scan   *hostUsers
	scanAt time.Time

	prefetched atomic.Bool // PrefetchMergeScan ran
}

// imageUser is something that uses an image: a guest's disk whose chain contains it,
// or an image file (a storage pool's volume) whose backing file it is.
type imageUser struct {
	what       string // for messages
	uuid, disk string // a guest's disk
	path       string // the user's own image file, if any
	id         fileID
	hasID      bool
}

// hostUsers records, for each image, what on the host uses it: every guest's disk
// chain (running guests' from their live definitions, shut-off guests' from their
// images' headers when autosnap runs on the host; see liveChains) and every storage pool
// volume built on it (on the local host by reading the headers of the files in each
// directory pool). Files that are in no storage pool and no guest's chain are not
// seen here; the planner looks at the images' own directories for those. Over a
// remote connection the chains of shut-off guests below their top images are not
// seen either.
type hostUsers struct {
	byID   map[fileID][]imageUser
	byPath map[string][]imageUser
}

// hostUsers returns the host-wide scan, reusing one younger than the TTL.
func (d *Driver) hostUsers(ctx context.Context) (*hostUsers, error) {
	h, err := d.cachedScan(ctx)
	if err != nil {
		return nil, err
	}
	// The scan keeps paths; identities are taken now. A file deleted since the scan
	// may have passed its inode number on to a new file (merges delete overlays and
	// creates make new ones all the time), so a cached identity could name an
	// unrelated image as used.
	return h.identified(d.imageFS()), nil
}

// PrefetchMergeScan starts the host-wide scan of image users in the background, once
// per driver, so that the first merge of a run finds it done instead of waiting for
// it (one call to libvirt plus reading image headers, tens of milliseconds on a
// busy host). The engine calls it when a run is going to remove snapshots. A scan
// that fails is dropped: the merge that needs it scans again and reports the error.
func (d *Driver) PrefetchMergeScan(ctx context.Context) {
	if !d.graph.prefetched.CompareAndSwap(false, true) {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.timeout)
		defer cancel()
		_, _ = d.cachedScan(ctx)
	}()
}

// cachedScan returns the host-wide scan (paths only), reusing one younger than the
// TTL; concurrent callers wait for one scan.
func (d *Driver) cachedScan(ctx context.Context) (*hostUsers, error) {
	s := &d.graph
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now
	if s.now != nil {
		now = s.now
	}
	ttl := s.ttl
	if ttl == 0 {
		ttl = defaultScanTTL
	}
	if s.scan == nil || now().Sub(s.scanAt) < 0 || now().Sub(s.scanAt) >= ttl {
		h, err := d.scanHost(ctx)
		if err != nil {
			return nil, err
		}
		s.scan, s.scanAt = h, now()
	}
	return s.scan, nil
}

// scanHost reads who uses which image on the libvirt host.
func (d *Driver) scanHost(ctx context.Context) (*hostUsers, error) {
	fs := d.imageFS()
	h := newHostUsers()
	add := func(dom golibvirt.Domain, chains map[string][]string) {
		uuid := formatUUID(dom.UUID)
		for disk, chain := range chains {
			if dom.ID <= 0 && len(chain) == 1 {
				// libvirt does not read the chains of shut-off guests; remotely
				// they stay unknown (see CollapseChain).
				if fs != nil {
					chain = headerChain(fs, chain[0])
				}
			}
			for _, p := range chain {
				h.add(p, imageUser{what: fmt.Sprintf("guest %s disk %s", dom.Name, disk), uuid: uuid, disk: disk})
			}
		}
	}
	var live []liveGuest
	var rest []golibvirt.Domain // nil: every guest, in one call
	if fs != nil {
		// Remotely a read per running guest costs a round trip each: one statistics
		// call is cheaper there.
		var err error
		if live, rest, err = d.liveChains(ctx); err != nil {
			return nil, err
		}
	}
	for _, l := range live {
		add(l.dom, l.chains)
	}
	if fs == nil || len(rest) > 0 {
		// Nowait: a guest busy with a long job (a memory snapshot) must not hold the
		// scan up; the images come from the definitions, not from QEMU. nil asks for
		// every guest.
		stats := func(doms []golibvirt.Domain) ([]golibvirt.DomainStatsRecord, error) {
			return call(ctx, func() ([]golibvirt.DomainStatsRecord, error) {
				return d.l.ConnectGetAllDomainStats(doms, uint32(golibvirt.DomainStatsBlock),
					uint32(golibvirt.ConnectGetAllDomainsStatsBacking|golibvirt.ConnectGetAllDomainsStatsNowait))
			})
		}
		recs, err := stats(rest)
		if err != nil && rest != nil {
			// A guest undefined since the listing fails the whole call: ask for
			// every guest instead.
			recs, err = stats(nil)
		}
		if err != nil {
			return nil, fmt.Errorf("listing the disks of every guest on %s: %w", d.node, err)
		}
		for _, r := range recs {
			add(r.Dom, blockChains(r.Params))
		}
	}
	if err := d.scanPools(ctx, fs, h); err != nil {
		return nil, err
	}
	return h, nil
}

// liveGuest is a running guest's disk chains (disk → images, top first), as its live
// definition states them.
type liveGuest struct {
	dom    golibvirt.Domain
	chains map[string][]string
}

// liveScanWorkers is how many live definitions liveChains reads at once.
const liveScanWorkers = 4

// liveChains lists every guest once and reads the disk chains of the running ones
// from their live definitions, which libvirt keeps current: block statistics would
// ask every guest's QEMU instead, which costs libvirtd and QEMU about 5 ms per
// running guest (100–200 ms with 24 running) on every run that merges. rest are the
// guests left to block statistics: shut-off ones (cheap: no QEMU), and running ones
// with a disk that is not a plain file or block device (a pool volume or network
// disk, whose path only statistics give), whose definition could not be read, or that
// stopped before it was read (its definition is then the stored one, without the
// chain below the top images: statistics report it shut off, and the chain is read
// from the images' headers). Listing once, then reading each guest, misses none.
func (d *Driver) liveChains(ctx context.Context) (live []liveGuest, rest []golibvirt.Domain, err error) {
	doms, err := call(ctx, func() ([]golibvirt.Domain, error) {
		ds, _, err := d.l.ConnectListAllDomains(1, 0)
		return ds, err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("listing the guests on %s: %w", d.node, err)
	}
	var running []golibvirt.Domain
	for _, dom := range doms {
		if dom.ID > 0 {
			running = append(running, dom)
		} else {
			rest = append(rest, dom)
		}
	}
	got := make([]*liveGuest, len(running))
	var wg sync.WaitGroup
	next := atomic.Int32{}
	for range min(liveScanWorkers, len(running)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < len(running) && ctx.Err() == nil; i = int(next.Add(1) - 1) {
				dom := running[i]
				raw, err := call(ctx, func() (string, error) { return d.l.DomainGetXMLDesc(dom, 0) })
				if err != nil {
					continue
				}
				if chains, ok := liveDefinedChains(raw); ok {
					got[i] = &liveGuest{dom: dom, chains: chains}
				}
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, nil, fmt.Errorf("listing the disks of every guest on %s: %w", d.node, err)
	}
	for i, g := range got {
		if g == nil {
			rest = append(rest, running[i])
		} else {
			live = append(live, *g)
		}
	}
	return live, rest, nil
}

// liveDefinedChains returns the disk chains a running guest's definition states; ok
// is false when raw is not one (unreadable, or the stored definition of a guest that
// has stopped, which lacks the chain below the top images) or definedChains cannot
// tell.
func liveDefinedChains(raw string) (map[string][]string, bool) {
	var x libvirtxml.Domain
	if x.Unmarshal(raw) != nil || x.ID == nil {
		return nil, false
	}
	return definedChains(&x)
}

// definedChains returns the disk chains (top first) a live definition states; ok is
// false when a disk with a source is not a plain file or block device.
func definedChains(x *libvirtxml.Domain) (map[string][]string, bool) {
	chains := map[string][]string{}
	if x.Devices == nil {
		return chains, true
	}
	path := func(src *libvirtxml.DomainDiskSource) (string, bool) {
		switch {
		case src == nil:
			return "", true
		case src.File != nil:
			return src.File.File, true
		case src.Block != nil:
			return src.Block.Dev, true
		case src.Dir == nil && src.Network == nil && src.Volume == nil && src.NVME == nil && src.VHostUser == nil && src.VHostVDPA == nil:
			return "", true // no source at all (an empty drive)
		}
		return "", false
	}
	for _, dk := range x.Devices.Disks {
		if dk.Target == nil {
			continue
		}
		p, ok := path(dk.Source)
		if !ok {
			return nil, false
		}
		if p == "" {
			continue
		}
		chain := []string{p}
		for b := dk.BackingStore; b != nil; b = b.BackingStore {
			p, ok := path(b.Source)
			if !ok {
				return nil, false
			}
			if p == "" {
				break
			}
			chain = append(chain, p)
		}
		chains[dk.Target.Dev] = chain
	}
	return chains, true
}

// identified returns a copy of h in which the users of every image that is a local
// file (with fs; nil means remote: paths only) are filed by the file's identity, so
// that symlinked and bind-mounted names meet, and the users' own files are identified.
// h itself keeps paths only.
func (h *hostUsers) identified(fs imageFS) *hostUsers {
	out := newHostUsers()
	for p, us := range h.byPath {
		us = append([]imageUser(nil), us...)
		if fs == nil {
			out.byPath[p] = us
			continue
		}
		for i := range us {
			if us[i].path != "" {
				if id, ok, err := fs.Stat(us[i].path); err == nil && ok {
					us[i].id, us[i].hasID = id, true
				}
			}
		}
		if id, ok, err := fs.Stat(p); err == nil && ok {
			out.byID[id] = append(out.byID[id], us...)
		} else {
			out.byPath[p] = us
		}
	}
	return out
}

// scanPools records the images that storage pool volumes build on.
func (d *Driver) scanPools(ctx context.Context, fs imageFS, h *hostUsers) error {
	pools, err := call(ctx, func() ([]golibvirt.StoragePool, error) {
		p, _, err := d.l.ConnectListAllStoragePools(1, golibvirt.ConnectListStoragePoolsActive)
		return p, err
	})
	if err != nil {
		if c := errCode(err); c == golibvirt.ErrNoSupport || c == golibvirt.ErrOperationUnsupported {
			return nil // no storage driver: no pools
		}
		return fmt.Errorf("listing the storage pools on %s: %w", d.node, err)
	}
	for _, pool := range pools {
		raw, err := call(ctx, func() (string, error) { return d.l.StoragePoolGetXMLDesc(pool, 0) })
		if errCode(err) == golibvirt.ErrNoStoragePool {
			continue
		}
		if err != nil {
			return fmt.Errorf("reading storage pool %s on %s: %w", pool.Name, d.node, err)
		}
		var px libvirtxml.StoragePool
		if err := px.Unmarshal(raw); err != nil {
			return fmt.Errorf("storage pool %s on %s: unreadable XML: %w", pool.Name, d.node, err)
		}
		if fs != nil && px.Target != nil && px.Target.Path != "" && (px.Type == "dir" || px.Type == "fs" || px.Type == "netfs") {
			// The directory itself, not libvirt's list, which only knows volumes
			// seen at the pool's last refresh.
			files, _ := fs.List(px.Target.Path)
			for _, f := range files {
				if b, err := fs.Backing(f); err == nil && b != "" && isLocalPath(b) {
					h.add(b, imageUser{what: fmt.Sprintf("%s (storage pool %s)", f, pool.Name), path: f})
				}
			}
			continue
		}
		vols, err := call(ctx, func() ([]golibvirt.StorageVol, error) {
			v, _, err := d.l.StoragePoolListAllVolumes(pool, 1, 0)
			return v, err
		})
		if errCode(err) == golibvirt.ErrNoStoragePool {
			continue
		}
		if err != nil {
			return fmt.Errorf("listing the volumes of storage pool %s on %s: %w", pool.Name, d.node, err)
		}
		for _, vol := range vols {
			raw, err := call(ctx, func() (string, error) { return d.l.StorageVolGetXMLDesc(vol, 0) })
			if errCode(err) == golibvirt.ErrNoStorageVol {
				continue
			}
			if err != nil {
				return fmt.Errorf("reading volume %s of storage pool %s on %s: %w", vol.Name, pool.Name, d.node, err)
			}
			var vx libvirtxml.StorageVolume
			if err := vx.Unmarshal(raw); err != nil {
				return fmt.Errorf("volume %s of storage pool %s on %s: unreadable XML: %w", vol.Name, pool.Name, d.node, err)
			}
			if vx.BackingStore == nil || vx.BackingStore.Path == "" {
				continue
			}
			path := vol.Key
			if vx.Target != nil && vx.Target.Path != "" {
				path = vx.Target.Path
			}
			h.add(vx.BackingStore.Path, imageUser{what: fmt.Sprintf("volume %s (storage pool %s)", path, pool.Name), path: path})
		}
	}
	return nil
}

func newHostUsers() *hostUsers {
	return &hostUsers{byID: map[fileID][]imageUser{}, byPath: map[string][]imageUser{}}
}

func (h *hostUsers) add(image string, u imageUser) {
	h.byPath[image] = append(h.byPath[image], u)
}

// blockChains groups a domain's block stats (with backing) into each disk's chain of
// image paths, top first.
func blockChains(params []golibvirt.TypedParam) map[string][]string {
	type layer struct {
		name, path string
	}
	layers := map[uint64]*layer{}
	for _, p := range params {
		rest, ok := strings.CutPrefix(p.Field, "block.")
		if !ok {
			continue
		}
		idx, field, ok := strings.Cut(rest, ".")
		if !ok || (field != "name" && field != "path") {
			continue
		}
		n, err := strconv.ParseUint(idx, 10, 32)
		if err != nil {
			continue
		}
		s, _ := p.Value.I.(string)
		l := layers[n]
		if l == nil {
			l = &layer{}
			layers[n] = l
		}
		if field == "name" {
			l.name = s
		} else {
			l.path = s
		}
	}
	idx := make([]uint64, 0, len(layers))
	for n := range layers {
		idx = append(idx, n)
	}
	sort.Slice(idx, func(i, j int) bool { return idx[i] < idx[j] })
	out := map[string][]string{}
	for _, n := range idx {
		if l := layers[n]; l.name != "" && l.path != "" {
			out[l.name] = append(out[l.name], l.path)
		}
	}
	return out
}

// headerChain follows an image's backing files through their qcow2 headers as far as
// they can be read.
func headerChain(fs imageFS, top string) []string {
	chain := []string{top}
	for f := top; len(chain) <= maxChainDepth; {
		b, err := fs.Backing(f)
		if err != nil || b == "" || !isLocalPath(b) {
			break
		}
		chain = append(chain, b)
		f = b
	}
	return chain
}

// of returns the users of the image with the given key, leaving out the guest's own
// disk (uuid, disk) and images of the graph itself.
func (h *hostUsers) of(keys *keyer, gr *diskGraph, key, uuid string) []string {
	var us []imageUser
	if id, ok := keys.id(key); ok {
		us = append(us, h.byID[id]...)
	}
	us = append(us, h.byPath[key]...)
	var out []string
	seen := map[string]bool{}
	for _, u := range us {
		if u.uuid != "" && u.uuid == uuid && u.disk == gr.disk {
			continue
		}
		if u.path != "" {
			k := u.path
			if u.hasID {
				if kk, ok := keys.byID[u.id]; ok {
					k = kk
				}
			}
			if _, in := gr.nodes[k]; in {
				continue
			}
		}
		if !seen[u.what] {
			seen[u.what] = true
			out = append(out, u.what)
		}
	}
	sort.Strings(out)
	return out
}

// attach records on each image of gr what outside the guest's disk uses it.
func (h *hostUsers) attach(gr *diskGraph, keys *keyer, uuid string) {
	for f, n := range gr.nodes {
		if !n.foreign {
			n.users = h.of(keys, gr, f, uuid)
		}
	}
}
