package libvirt

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/driver"
)

// DefineGuest implements driver.GuestDefiner: it defines a persistent domain from a
// domain XML saved with a backup (see RewriteForDefine for what changes) and starts
// it when req.Start.
func (d *Driver) DefineGuest(ctx context.Context, req driver.DefineRequest) (driver.Guest, []string, error) {
	dir := req.Dir
	if dir == "" {
		for _, f := range req.Disks {
			dir = filepath.Dir(f)
			break
		}
	}
	xml, notes, err := RewriteForDefine(req.Config, req.Name, req.Disks, dir)
	if err == nil && req.NoNetwork {
		xml, err = withoutInterfaces(xml)
	}
	if err != nil {
		return driver.Guest{}, nil, err
	}
	if _, err := call(ctx, func() (golibvirt.Domain, error) { return d.l.DomainLookupByName(req.Name) }); err == nil {
		return driver.Guest{}, nil, fmt.Errorf("a guest named %s already exists on %s: %w; choose another --define name", req.Name, d.node, driver.ErrExists)
	}
	dom, err := call(ctx, func() (golibvirt.Domain, error) { return d.l.DomainDefineXML(xml) })
	if err != nil {
		return driver.Guest{}, nil, fmt.Errorf("defining guest %s on %s: %w", req.Name, d.node, err)
	}
	g := driver.Guest{Node: d.node, Name: dom.Name, UUID: formatUUID(dom.UUID), Kind: driver.KindQEMU, State: driver.StateShutoff}
	if req.Start {
		if err := call0(ctx, func() error { return d.l.DomainCreate(dom) }); err != nil {
			return g, notes, fmt.Errorf("guest %s was defined on %s but did not start: %w; see its log in /var/log/libvirt/qemu/%s.log", req.Name, d.node, err, req.Name)
		}
		g.State = driver.StateRunning
	}
	return g, notes, nil
}

// RewriteForDefine turns a saved domain XML into the definition of a new guest that
// can run beside the original: the new name, no UUID (libvirt makes one), no MAC
// addresses (libvirt makes new ones), no generated runtime names (agent socket path,
// NVRAM file: libvirt derives them from the new name), and each disk in disks pointed
// at its restored qcow2 file with no backing chain. Disk devices not in disks are left
// out (a note says so), so the new guest never writes into the original's images;
// CD-ROMs and floppies are kept. Every disk in disks must exist in the definition.
// Serial ports and consoles that write to files (and chardev logs) write to files of
// the new guest in dir instead (<name>-<file name>), since two QEMUs cannot share one.
func RewriteForDefine(config []byte, name string, disks map[string]string, dir string) (string, []string, error) {
	var x libvirtxml.Domain
	if err := x.Unmarshal(string(config)); err != nil {
		return "", nil, fmt.Errorf("the saved definition is not a libvirt domain XML: %w", err)
	}
	var notes []string
	x.Name, x.UUID, x.ID = name, "", nil
	if x.OS != nil && x.OS.NVRam != nil {
		x.OS.NVRam.NVRam = ""
		x.OS.NVRam.Source = nil
		notes = append(notes, "the UEFI variable store starts from its template (the original's NVRAM file is not copied)")
	}
	if x.Devices == nil {
		return "", nil, fmt.Errorf("the saved definition has no devices")
	}
	seen := map[string]bool{}
	var kept []libvirtxml.DomainDisk
	for _, dk := range x.Devices.Disks {
		if dk.Device == "cdrom" || dk.Device == "floppy" {
			kept = append(kept, dk)
			continue
		}
		target := ""
		if dk.Target != nil {
			target = dk.Target.Dev
		}
		file, ok := disks[target]
		if !ok {
			notes = append(notes, fmt.Sprintf("disk %s was not restored and is left out of the new guest", target))
			continue
		}
		seen[target] = true
		dk.Source = &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: file}}
		dk.BackingStore = nil
		if dk.Driver == nil {
			dk.Driver = &libvirtxml.DomainDiskDriver{Name: "qemu"}
		}
		dk.Driver.Type = "qcow2"
		kept = append(kept, dk)
	}
	x.Devices.Disks = kept
	var missing []string
	for t := range disks {
		if !seen[t] {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return "", nil, fmt.Errorf("the saved definition has no disk %v", missing)
	}
	for i := range x.Devices.Interfaces {
		x.Devices.Interfaces[i].MAC = nil
	}
	for i := range x.Devices.Channels {
		if s := x.Devices.Channels[i].Source; s != nil && s.UNIX != nil {
			s.UNIX.Path = ""
		}
	}
	own := func(path string) string { return filepath.Join(dir, name+"-"+filepath.Base(path)) }
	chardev := func(src *libvirtxml.DomainChardevSource, log *libvirtxml.DomainChardevLog) {
		if src != nil && src.File != nil && src.File.Path != "" {
			src.File.Path = own(src.File.Path)
		}
		if log != nil && log.File != "" {
			log.File = own(log.File)
		}
	}
	for i := range x.Devices.Serials {
		chardev(x.Devices.Serials[i].Source, x.Devices.Serials[i].Log)
	}
	for i := range x.Devices.Consoles {
		chardev(x.Devices.Consoles[i].Source, x.Devices.Consoles[i].Log)
	}
	out, err := x.Marshal()
	if err != nil {
		return "", nil, fmt.Errorf("writing the new definition: %w", err)
	}
	return out, notes, nil
}

// movePoll is how often MoveDisks polls the block jobs.
const movePoll = 200 * time.Millisecond

// MoveDisks implements driver.GuestDefiner with libvirt block copy (QEMU drive-mirror
// of the whole chain into a new image, a transient job so a persistent domain may run
// it), all disks at once: once every copy is in sync the guest is pivoted to the new
// images, and its persistent definition is rewritten to name them. Block pull would
// do without the pivot, but QEMU 7.2's block-stream crashed (SIGSEGV) under a running
// guest's I/O here; mirroring did not. A rerun after an interrupted MoveDisks adopts
// the copies still running and skips disks already switched over.
func (d *Driver) MoveDisks(ctx context.Context, g driver.Guest, moves map[string]string, progress func(done, total uint64)) (err error) {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return err
	}
	var disks []string
	for disk := range moves {
		disks = append(disks, disk)
	}
	sort.Strings(disks)
	var started []string
	defer func() {
		if err == nil {
			return
		}
		// Cancel the copies still running: the guest stays on its (intact) chain.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for _, disk := range started {
			_ = call0(actx, func() error { return d.l.DomainBlockJobAbort(dom, disk, 0) })
		}
	}()
	for _, disk := range disks {
		switch st, err := d.existingCopy(ctx, dom, g, disk, moves[disk]); {
		case err != nil:
			return err
		case st == copyDone:
			continue
		case st == copyRunning:
			started = append(started, disk)
			continue
		}
		dest := fmt.Sprintf(`<disk type="file"><source file=%q/><driver type="qcow2"/></disk>`, moves[disk])
		if err := call0(ctx, func() error {
			return d.l.DomainBlockCopy(dom, disk, dest, nil, golibvirt.DomainBlockCopyTransientJob)
		}); err != nil {
			return fmt.Errorf("guest %s on %s: starting the copy of disk %s to %s: %w", g.Name, d.node, disk, moves[disk], err)
		}
		started = append(started, disk)
	}
	for {
		ready := 0
		var done, total uint64
		for _, disk := range started {
			j, err := d.jobInfo(ctx, dom, disk)
			if err != nil {
				return fmt.Errorf("guest %s on %s: reading the copy of disk %s: %w", g.Name, d.node, disk, err)
			}
			if !j.found {
				return fmt.Errorf("guest %s on %s: the copy of disk %s stopped (see /var/log/libvirt/qemu/%s.log); the guest keeps running on the repository's images", g.Name, d.node, disk, g.Name)
			}
			done, total = done+j.cur, total+j.end
			if j.end > 0 && j.cur == j.end && d.mirrorReady(ctx, dom, disk) {
				ready++
			}
		}
		if progress != nil {
			progress(done, total)
		}
		if ready == len(started) {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("guest %s on %s: copy stopped: %w; the guest keeps running on the repository's images", g.Name, d.node, ctx.Err())
		case <-time.After(movePoll):
		}
	}
	for len(started) > 0 {
		disk := started[0]
		if err := call0(ctx, func() error { return d.l.DomainBlockJobAbort(dom, disk, golibvirt.DomainBlockJobAbortPivot) }); err != nil {
			return fmt.Errorf("guest %s on %s: switching disk %s to %s: %w", g.Name, d.node, disk, moves[disk], err)
		}
		started = started[1:]
	}
	// The pivot changed the running guest only; its definition must name the new
	// images too, or its next start would use the overlays.
	x, err := d.domainXML(ctx, dom, true)
	if err != nil {
		return err
	}
	for i := range x.Devices.Disks {
		dk := &x.Devices.Disks[i]
		if dk.Target == nil || moves[dk.Target.Dev] == "" {
			continue
		}
		dk.Source = &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: moves[dk.Target.Dev]}}
		dk.BackingStore = nil
	}
	xml, err := x.Marshal()
	if err != nil {
		return err
	}
	if _, err := call(ctx, func() (golibvirt.Domain, error) { return d.l.DomainDefineXML(xml) }); err != nil {
		return fmt.Errorf("guest %s on %s: the disks were moved, but updating its definition failed: %w; set the disks' sources to %v by hand (virsh edit)", g.Name, d.node, err, moves)
	}
	return nil
}
