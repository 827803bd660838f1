package libvirt

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/driver"
)

// CheckpointPrefix starts the name of every checkpoint (and dirty bitmap) autosnap
// creates. Checkpoints without it belong to someone else and are never listed, used or
// removed.
const CheckpointPrefix = driver.CheckpointPrefix

// IsOwnCheckpoint reports whether a checkpoint name is one of autosnap's.
func IsOwnCheckpoint(name string) bool { return strings.HasPrefix(name, CheckpointPrefix) }

// checkpointXML is libvirt's <domaincheckpoint> as far as autosnap reads and writes it
// (libvirtxml of this module version has no checkpoint type).
type checkpointXML struct {
	XMLName      xml.Name             `xml:"domaincheckpoint"`
	Name         string               `xml:"name"`
	Description  string               `xml:"description,omitempty"`
	CreationTime int64                `xml:"creationTime,omitempty"`
	Parent       *checkpointParentXML `xml:"parent,omitempty"`
	Disks        []checkpointDiskXML  `xml:"disks>disk"`
}

type checkpointParentXML struct {
	Name string `xml:"name"`
}

type checkpointDiskXML struct {
	Name       string `xml:"name,attr"`
	Checkpoint string `xml:"checkpoint,attr,omitempty"` // bitmap or no
	Bitmap     string `xml:"bitmap,attr,omitempty"`
	Size       uint64 `xml:"size,attr,omitempty"`
}

// tracked lists the disks whose changes the checkpoint records with a bitmap.
func (c *checkpointXML) tracked() []string {
	var out []string
	for _, d := range c.Disks {
		if d.Checkpoint == "bitmap" {
			out = append(out, d.Name)
		}
	}
	return out
}

func (c *checkpointXML) bitmap(disk string) string {
	for _, d := range c.Disks {
		if d.Name == disk && d.Bitmap != "" {
			return d.Bitmap
		}
	}
	return c.Name
}

// ownCheckpoint is one of autosnap's checkpoints with its handle and definition.
type ownCheckpoint struct {
	h golibvirt.DomainCheckpoint
	x checkpointXML
}

// ownCheckpoints lists autosnap's checkpoints of dom, oldest first.
func (d *Driver) ownCheckpoints(ctx context.Context, dom golibvirt.Domain) ([]ownCheckpoint, error) {
	type res struct {
		cps []golibvirt.DomainCheckpoint
	}
	r, err := call(ctx, func() (res, error) {
		cps, _, err := d.l.DomainListAllCheckpoints(dom, 1, 0)
		return res{cps}, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing checkpoints of %s on %s: %w", dom.Name, d.node, d.notFound(dom.Name, err))
	}
	var out []ownCheckpoint
	for _, h := range r.cps {
		if !IsOwnCheckpoint(h.Name) {
			continue
		}
		x, err := d.checkpointDef(ctx, h, 0)
		if err != nil {
			if errCode(err) == golibvirt.ErrNoDomainCheckpoint {
				continue // deleted since the listing
			}
			return nil, err
		}
		out = append(out, ownCheckpoint{h: h, x: x})
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].x.CreationTime != out[j].x.CreationTime {
			return out[i].x.CreationTime < out[j].x.CreationTime
		}
		return out[i].x.Name < out[j].x.Name
	})
	return out, nil
}

func (d *Driver) checkpointDef(ctx context.Context, h golibvirt.DomainCheckpoint, flags golibvirt.DomainCheckpointXMLFlags) (checkpointXML, error) {
	s, err := call(ctx, func() (string, error) {
		return d.l.DomainCheckpointGetXMLDesc(h, uint32(flags|golibvirt.DomainCheckpointXMLNoDomain))
	})
	if err != nil {
		return checkpointXML{}, fmt.Errorf("reading checkpoint %s of %s: %w", h.Name, h.Dom.Name, err)
	}
	var x checkpointXML
	if err := xml.Unmarshal([]byte(s), &x); err != nil {
		return checkpointXML{}, fmt.Errorf("checkpoint %s of %s: unreadable definition: %w", h.Name, h.Dom.Name, err)
	}
	return x, nil
}

// checkpoints lists autosnap's checkpoints of a guest with their usability. With
// validate (an active guest) libvirt itself judges them (validateCheckpoint); with
// offline (a shut-off guest) the images of each disk's chain (chains, active image
// first) are read directly (bitmapRun); with neither, Unusable stays empty (see
// BackupSourceUnvalidated).
func (d *Driver) checkpoints(ctx context.Context, dom golibvirt.Domain, validate, offline bool, chains map[string][]string) ([]driver.Checkpoint, error) {
	own, err := d.ownCheckpoints(ctx, dom)
	if err != nil {
		return nil, err
	}
	cache := bitmapCache{}
	out := make([]driver.Checkpoint, 0, len(own))
	// A running guest's checkpoints are validated concurrently: each validation is a
	// libvirt job (a QEMU query and a metadata write) whose round trips overlap.
	invalid := make([]error, len(own))
	if validate {
		var wg sync.WaitGroup
		for i, c := range own {
			wg.Add(1)
			go func() {
				defer wg.Done()
				invalid[i] = d.validateCheckpoint(ctx, dom, c.h)
			}()
		}
		wg.Wait()
	}
	for i, c := range own {
		cp := driver.Checkpoint{Name: c.x.Name, Created: time.Unix(c.x.CreationTime, 0).UTC(), Disks: c.x.tracked()}
		switch {
		case validate:
			if err := invalid[i]; err != nil {
				cp.Unusable = "libvirt cannot read its changes: " + libvirtMessage(err)
			}
		case offline:
			var why []string
			for _, disk := range cp.Disks {
				chain, ok := chains[disk]
				if !ok {
					why = append(why, "disk "+disk+" is no longer attached")
					continue
				}
				_, w, err := cache.bitmapRun(ctx, chain, c.x.bitmap(disk))
				if err != nil {
					return nil, err
				}
				if w != "" {
					why = append(why, "disk "+disk+": "+w)
				}
			}
			cp.Unusable = strings.Join(why, "; ")
		}
		out = append(out, cp)
	}
	return out, nil
}

// bitmapCache holds the bitmaps of images already read.
type bitmapCache map[string][]qemuBitmap

func (c bitmapCache) get(ctx context.Context, img string) ([]qemuBitmap, error) {
	if b, ok := c[img]; ok {
		return b, nil
	}
	b, err := imageBitmaps(ctx, img)
	if err != nil {
		return nil, err
	}
	c[img] = b
	return b, nil
}

// bitmapRun finds the images of a shut-off guest's disk chain (active image first)
// whose bitmaps together hold the changes since checkpoint bitmap name: the active
// image and the unbroken run below it carrying the bitmap (an overlay made after the
// checkpoint holds the changes since the overlay, the image below those before). It
// returns the run's length, or why the changes cannot be read: the active image lacks
// the bitmap, or a bitmap of the run is inconsistent or not recording.
func (c bitmapCache) bitmapRun(ctx context.Context, chain []string, name string) (int, string, error) {
	n := 0
	for i, img := range chain {
		bms, err := c.get(ctx, img)
		if err != nil {
			return 0, "", err
		}
		w := bitmapUsable(bms, name)
		if strings.Contains(w, "missing") {
			break
		}
		if w != "" && (i == 0 || strings.Contains(w, "inconsistent")) {
			return 0, w, nil
		}
		n++
	}
	if n == 0 {
		return 0, "bitmap " + name + " is missing from the disk's active image", nil
	}
	return n, "", nil
}

// validateCheckpoint asks libvirt whether a running guest's checkpoint can be used, as
// virtnbdbackup does: redefining the checkpoint with its own definition and
// REDEFINE_VALIDATE makes libvirt check, for every disk, that the bitmap is in the top
// image, that the images below carrying it form no gap, and that it is recording,
// persistent and not inconsistent. (Asking for the checkpoint's size does not catch an
// inconsistent bitmap QEMU loaded after an unclean stop.) The metadata is unchanged.
func (d *Driver) validateCheckpoint(ctx context.Context, dom golibvirt.Domain, h golibvirt.DomainCheckpoint) error {
	s, err := call(ctx, func() (string, error) {
		return d.l.DomainCheckpointGetXMLDesc(h, uint32(golibvirt.DomainCheckpointXMLSecure))
	})
	if err != nil {
		return err
	}
	_, err = call(ctx, func() (golibvirt.DomainCheckpoint, error) {
		return d.l.DomainCheckpointCreateXML(dom, s, uint32(golibvirt.DomainCheckpointCreateRedefine|golibvirt.DomainCheckpointCreateRedefineValidate))
	})
	return err
}

// libvirtMessage is the human part of a libvirt error.
func libvirtMessage(err error) string {
	var e golibvirt.Error
	if errors.As(err, &e) {
		return e.Message
	}
	return err.Error()
}

// qemuBitmap is a persistent dirty bitmap of a qcow2 image as qemu-img reports it.
type qemuBitmap struct {
	Name        string   `json:"name"`
	Granularity uint64   `json:"granularity"`
	Flags       []string `json:"flags"`
}

// imageBitmaps lists the persistent bitmaps of one image (not its backing files).
// -U reads an image a running QEMU holds; its bitmaps then carry the in-use flag.
func imageBitmaps(ctx context.Context, file string) ([]qemuBitmap, error) {
	out, err := runCmd(ctx, "qemu-img", "info", "-U", "--output=json", file)
	if err != nil {
		return nil, err
	}
	var info struct {
		Format string `json:"format"`
		Spec   struct {
			Data struct {
				Bitmaps []qemuBitmap `json:"bitmaps"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return nil, fmt.Errorf("qemu-img info %s: unreadable output: %w", file, err)
	}
	return info.Spec.Data.Bitmaps, nil
}

// bitmapUsable says why bitmap name in an image of a shut-off guest cannot be used,
// or "" when it can: present, recording (auto) and cleanly stored (not in-use).
func bitmapUsable(bms []qemuBitmap, name string) string {
	for _, b := range bms {
		if b.Name != name {
			continue
		}
		switch {
		case slices.Contains(b.Flags, "in-use"):
			return "bitmap " + name + " is inconsistent (QEMU did not close the image cleanly)"
		case !slices.Contains(b.Flags, "auto"):
			return "bitmap " + name + " is not recording"
		}
		return ""
	}
	return "bitmap " + name + " is missing from the disk's active image"
}

// DeleteCheckpoint implements driver.Backupper. libvirt keeps one recording bitmap per
// checkpoint, each holding every change since its own checkpoint, so removing one
// checkpoint loses nothing a later one tracks; libvirt merges or drops the bitmap along
// every chain (snapshot overlays included). When that is impossible because the bitmap
// is already gone or broken (an unclean stop, images changed behind libvirt's back), the
// metadata alone is removed and the leftover bitmaps are removed from the images of a
// shut-off guest, so a checkpoint never lingers. Names that are not autosnap's are
// refused.
func (d *Driver) DeleteCheckpoint(ctx context.Context, g driver.Guest, name string) error {
	if !IsOwnCheckpoint(name) {
		return fmt.Errorf("guest %s: checkpoint %s is not autosnap's (its names start with %q); autosnap never removes others' checkpoints", g.Name, name, CheckpointPrefix)
	}
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return err
	}
	unlock := d.domLock(g.Key())
	defer unlock()
	return d.deleteCheckpoint(ctx, g, dom, name)
}

func (d *Driver) deleteCheckpoint(ctx context.Context, g driver.Guest, dom golibvirt.Domain, name string) error {
	h, err := call(ctx, func() (golibvirt.DomainCheckpoint, error) { return d.l.DomainCheckpointLookupByName(dom, name, 0) })
	if err != nil {
		if errCode(err) == golibvirt.ErrNoDomainCheckpoint {
			return fmt.Errorf("guest %s on %s has no checkpoint %s: %w", g.Name, d.node, name, driver.ErrNotFound)
		}
		return fmt.Errorf("guest %s on %s: looking up checkpoint %s: %w", g.Name, d.node, name, d.notFound(g.Name, err))
	}
	x, xerr := d.checkpointDef(ctx, h, 0)
	st, err := d.domState(ctx, dom)
	if err != nil {
		return err
	}
	if !st.Active() {
		if err := d.resumeCheckpoints(ctx, dom, false); err != nil {
			return fmt.Errorf("guest %s: restoring checkpoints set aside for a snapshot: %w", g.Name, err)
		}
		// The images are free: remove the bitmaps from every image of each disk's chain
		// (a snapshot taken while shut off may have left copies below), then the
		// metadata. A crash in between leaves metadata whose bitmaps are gone, which is
		// listed as unusable and removed by the next call.
		if xerr != nil {
			return fmt.Errorf("guest %s: %w", g.Name, xerr)
		}
		if err := d.removeLeftoverBitmaps(ctx, dom, x); err != nil {
			return fmt.Errorf("guest %s: removing the bitmaps of checkpoint %s: %w", g.Name, name, err)
		}
		if err := call0(ctx, func() error { return d.l.DomainCheckpointDelete(h, golibvirt.DomainCheckpointDeleteMetadataOnly) }); err != nil {
			return fmt.Errorf("guest %s on %s: removing checkpoint %s: %w", g.Name, d.node, name, err)
		}
		return nil
	}
	// A backup job left by a killed run may still hold this checkpoint's bitmaps.
	if err := d.abortStaleBackup(ctx, dom); err != nil {
		return fmt.Errorf("guest %s: %w", g.Name, err)
	}
	err = call0(ctx, func() error { return d.l.DomainCheckpointDelete(h, 0) })
	if err == nil {
		return nil
	}
	code := errCode(err)
	if code != golibvirt.ErrCheckpointInconsistent && code != golibvirt.ErrOperationFailed && code != golibvirt.ErrInternalError {
		return fmt.Errorf("guest %s on %s: removing checkpoint %s: %w (check with virsh checkpoint-list %s)", g.Name, d.node, name, err, g.Name)
	}
	// The bitmaps are broken or gone: drop the metadata so the checkpoint cannot be used,
	// then clean what is left of its bitmaps where that can be done safely.
	if merr := call0(ctx, func() error { return d.l.DomainCheckpointDelete(h, golibvirt.DomainCheckpointDeleteMetadataOnly) }); merr != nil {
		return fmt.Errorf("guest %s on %s: removing checkpoint %s failed (%v), and so did removing its metadata: %w", g.Name, d.node, name, err, merr)
	}
	if xerr == nil {
		if rerr := d.removeLeftoverBitmaps(ctx, dom, x); rerr != nil {
			return fmt.Errorf("guest %s: checkpoint %s removed from libvirt (its bitmaps were broken: %v), but leftover bitmaps remain: %w", g.Name, name, libvirtMessage(err), rerr)
		}
	}
	return nil
}

// removeLeftoverBitmaps removes a checkpoint's bitmaps from every image of a shut-off
// guest's chains; a running guest's images belong to QEMU and keep them (harmless:
// libvirt ignores bitmaps without a checkpoint, and cleanup removes them once the guest
// is shut off).
func (d *Driver) removeLeftoverBitmaps(ctx context.Context, dom golibvirt.Domain, x checkpointXML) error {
	dx, active, err := d.currentXML(ctx, dom)
	if err != nil || active {
		return err
	}
	chains, err := d.chainsOf(ctx, dx, false)
	if err != nil {
		return err
	}
	for _, disk := range x.tracked() {
		for _, img := range chains[disk] {
			bms, err := imageBitmaps(ctx, img)
			if err != nil {
				return err
			}
			bm := x.bitmap(disk)
			if !slices.ContainsFunc(bms, func(b qemuBitmap) bool { return b.Name == bm }) {
				continue
			}
			if _, err := runCmd(ctx, "qemu-img", "bitmap", "--remove", img, bm); err != nil {
				return err
			}
		}
	}
	return nil
}

var _ driver.BitmapInspector = (*Driver)(nil)

// Bitmaps implements driver.BitmapInspector: autosnap's bitmaps in the images of every disk of a guest, read with
// qemu-img -U (a running guest's bitmaps show the in-use flag while QEMU holds them).
func (d *Driver) Bitmaps(ctx context.Context, g driver.Guest) ([]driver.Bitmap, error) {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return nil, err
	}
	dx, active, err := d.currentXML(ctx, dom)
	if err != nil {
		return nil, err
	}
	chains, err := d.chainsOf(ctx, dx, active)
	if err != nil {
		return nil, err
	}
	own, err := d.ownCheckpoints(ctx, dom)
	if err != nil {
		return nil, err
	}
	known := map[string]bool{}
	for _, c := range own {
		for _, disk := range c.x.tracked() {
			known[disk+"\x00"+c.x.bitmap(disk)] = true
		}
	}
	var out []driver.Bitmap
	seen := map[string]bool{}
	disks := make([]string, 0, len(chains))
	for k := range chains {
		disks = append(disks, k)
	}
	sort.Strings(disks)
	for _, disk := range disks {
		for _, img := range chains[disk] {
			bms, err := imageBitmaps(ctx, img)
			if err != nil {
				return nil, fmt.Errorf("guest %s disk %s: %w", g.Name, disk, err)
			}
			for _, b := range bms {
				if !IsOwnCheckpoint(b.Name) {
					continue
				}
				out = append(out, driver.Bitmap{Disk: disk, Image: img, Name: b.Name, Flags: b.Flags, Checkpoint: known[disk+"\x00"+b.Name]})
				seen[disk+"\x00"+b.Name] = true
			}
		}
		// A running QEMU writes the bitmaps it created into the image only when it
		// closes it: until then the checkpoint's bitmap lives in QEMU alone.
		if active && len(chains[disk]) > 0 {
			for _, c := range own {
				if !slices.Contains(c.x.tracked(), disk) || seen[disk+"\x00"+c.x.bitmap(disk)] {
					continue
				}
				out = append(out, driver.Bitmap{Disk: disk, Image: chains[disk][0], Name: c.x.bitmap(disk), Flags: []string{"in-memory"}, Checkpoint: true})
			}
		}
	}
	return out, nil
}

// RemoveOrphanBitmaps implements driver.BitmapInspector: it removes autosnap's bitmaps that no checkpoint accounts for from
// the images of a shut-off guest (a running guest's images are QEMU's: it refuses).
func (d *Driver) RemoveOrphanBitmaps(ctx context.Context, g driver.Guest, bms []driver.Bitmap) error {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return err
	}
	if len(bms) == 0 {
		return nil
	}
	st, err := d.domState(ctx, dom)
	if err != nil {
		return err
	}
	if st.Active() {
		return fmt.Errorf("guest %s is %s: bitmaps without a checkpoint can only be removed while it is shut off (QEMU holds its images)", g.Name, st)
	}
	for _, b := range bms {
		if !IsOwnCheckpoint(b.Name) || b.Checkpoint {
			return fmt.Errorf("guest %s: bitmap %s on %s is not an orphan of autosnap's; not removed", g.Name, b.Name, b.Image)
		}
		if _, err := runCmd(ctx, "qemu-img", "bitmap", "--remove", b.Image, b.Name); err != nil {
			return fmt.Errorf("guest %s disk %s: %w", g.Name, b.Disk, err)
		}
	}
	return nil
}
