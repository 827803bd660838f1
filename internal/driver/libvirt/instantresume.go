package libvirt

import (
	"context"
	"fmt"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/driver"
)

// DiskStates implements driver.DiskStater from the guest's live definition.
func (d *Driver) DiskStates(ctx context.Context, g driver.Guest) (map[string]driver.DiskState, error) {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return nil, err
	}
	x, err := d.domainXML(ctx, dom, false)
	if err != nil {
		return nil, fmt.Errorf("guest %s on %s: %w", g.Name, d.node, err)
	}
	out := map[string]driver.DiskState{}
	if x.Devices == nil {
		return out, nil
	}
	for _, dk := range x.Devices.Disks {
		if dk.Target == nil || dk.Source == nil || dk.Source.File == nil {
			continue
		}
		st := driver.DiskState{Source: dk.Source.File.File}
		if dk.Mirror != nil && dk.Mirror.Source != nil && dk.Mirror.Source.File != nil {
			st.Mirror = dk.Mirror.Source.File.File
		}
		out[dk.Target.Dev] = st
	}
	return out, nil
}

// copyState is what MoveDisks finds on a disk before it starts a copy.
type copyState int

const (
	copyNone    copyState = iota // no job: start the copy
	copyRunning                  // a copy to the destination runs (a MoveDisks that died): adopt it
	copyDone                     // the disk already uses the destination: nothing to copy
)

// existingCopy tells MoveDisks whether an earlier, interrupted MoveDisks already
// started or finished the move of disk to dest, so a rerun continues it instead of
// failing on the job still running. Any other block job on the disk is an error.
func (d *Driver) existingCopy(ctx context.Context, dom golibvirt.Domain, g driver.Guest, disk, dest string) (copyState, error) {
	sts, err := d.DiskStates(ctx, g)
	if err != nil {
		return copyNone, err
	}
	st := sts[disk]
	if st.Source == dest {
		return copyDone, nil
	}
	j, err := d.jobInfo(ctx, dom, disk)
	if err != nil {
		return copyNone, fmt.Errorf("guest %s on %s: reading the block job of disk %s: %w", g.Name, d.node, disk, err)
	}
	switch {
	case !j.found:
		return copyNone, nil
	case j.typ == golibvirt.DomainBlockJobTypeCopy && st.Mirror == dest:
		return copyRunning, nil
	}
	return copyNone, fmt.Errorf("guest %s on %s: disk %s has another block job running (type %d, to %q); wait for it or abort it (virsh blockjob %s %s --abort)", g.Name, d.node, disk, j.typ, st.Mirror, g.Name, disk)
}
