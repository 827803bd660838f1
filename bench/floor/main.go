// Command floor measures libvirt's own floor for a fleet `snap --keep K` round: the
// creates and deletes autosnap's round makes, issued back to back over one connection
// with nothing else — no listing, no checks, and block jobs awaited by event rather
// than polled. bench/fleet.sh compares autosnap's rounds against it.
//
// Per guest and round: an external, disk-only, atomic snapshot of vda (overlay beside
// the image, named as autosnap names it); once more than K exist, the oldest is
// deleted as autosnap deletes it: its overlay is block-committed into its state image
// (libvirt deletes the overlay), the child's metadata is redefined onto the merged
// image, and the oldest's metadata is dropped. -mode native instead lets libvirt 9's
// own external snapshot delete do all of it in one call.
//
// The guests (running, one qcow2 disk vda) are those whose names start with -prefix;
// the snapshots the floor made before are read back first (not timed), so each run is
// one round, to be interleaved with autosnap's rounds on a busy machine.
//
//	go run ./bench/floor -prefix astbench-fa- -keep 2
package main

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/rpctrace"
)

type snap struct {
	name, overlay, state string
	snap                 golibvirt.DomainSnapshot
}

type guest struct {
	dom    golibvirt.Domain
	active string
	chain  []snap
}

func main() {
	prefix := flag.String("prefix", "astbench-fa-", "guests whose names start with this")
	keep := flag.Int("keep", 2, "snapshots kept per guest")
	mode := flag.String("mode", "commit", "commit: as autosnap deletes; native: libvirt's own snapshot delete")
	trace := flag.Bool("trace", false, "count the calls through a proxy (which adds a little latency)")
	flag.Parse()
	if err := run(*prefix, *keep, *mode, *trace); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}

func run(prefix string, keep int, mode string, trace bool) error {
	if keep < 1 {
		return fmt.Errorf("-keep must be at least 1")
	}
	u, _ := url.Parse("qemu:///system")
	var p *rpctrace.Proxy
	if trace {
		dir, err := os.MkdirTemp("", "floor")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		if p, err = rpctrace.Start(filepath.Join(dir, "libvirt.sock"), ""); err != nil {
			return err
		}
		defer p.Close()
		u, _ = url.Parse(p.URI())
	}
	l, err := golibvirt.ConnectToURI(u)
	if err != nil {
		return err
	}
	defer l.Disconnect()

	doms, _, err := l.ConnectListAllDomains(1, golibvirt.ConnectListDomainsActive)
	if err != nil {
		return err
	}
	var guests []*guest
	next := 1
	for _, d := range doms {
		if !strings.HasPrefix(d.Name, prefix) {
			continue
		}
		g, n, err := load(l, d)
		if err != nil {
			return fmt.Errorf("%s: %w", d.Name, err)
		}
		next = max(next, n)
		guests = append(guests, g)
	}
	if len(guests) == 0 {
		return fmt.Errorf("no running guest named %s…", prefix)
	}
	sort.Slice(guests, func(i, j int) bool { return guests[i].dom.Name < guests[j].dom.Name })

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := l.SubscribeEvents(ctx, golibvirt.DomainEventIDBlockJob, golibvirt.OptDomain{})
	if err != nil {
		return err
	}
	if p != nil {
		p.Reset()
	}
	start := time.Now()
	for _, g := range guests {
		if err := g.round(l, events, next, keep, mode); err != nil {
			return fmt.Errorf("%s, round %d: %w", g.dom.Name, next, err)
		}
	}
	took := time.Since(start)
	if p != nil {
		fmt.Print(rpctrace.Format(p.Stats(), len(guests)))
	}
	fmt.Printf("floor_seconds=%.3f guests=%d round=%d mode=%s\n", took.Seconds(), len(guests), next, mode)
	return nil
}

// load reads what the earlier runs left on d: its active vda image and the floor's
// snapshots, oldest first. n is the number of the next round.
func load(l *golibvirt.Libvirt, d golibvirt.Domain) (g *guest, n int, err error) {
	raw, err := l.DomainGetXMLDesc(d, 0)
	if err != nil {
		return nil, 0, err
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(raw); err != nil {
		return nil, 0, err
	}
	g = &guest{dom: d, active: vda(&x)}
	if g.active == "" {
		return nil, 0, fmt.Errorf("no file-backed vda")
	}
	snaps, _, err := l.DomainListAllSnapshots(d, 1, 0)
	if err != nil {
		return nil, 0, err
	}
	n = 1
	for _, s := range snaps {
		var r int
		if _, err := fmt.Sscanf(s.Name, "autofloor%06d", &r); err != nil {
			return nil, 0, fmt.Errorf("snapshot %s was not made by the floor: use a fresh guest", s.Name)
		}
		raw, err := l.DomainSnapshotGetXMLDesc(s, 0)
		if err != nil {
			return nil, 0, err
		}
		var sx libvirtxml.DomainSnapshot
		if err := sx.Unmarshal(raw); err != nil {
			return nil, 0, err
		}
		sn := snap{name: s.Name, state: vda(sx.Domain), snap: s}
		for _, dk := range sx.Disks.Disks {
			if dk.Name == "vda" && dk.Source != nil && dk.Source.File != nil {
				sn.overlay = dk.Source.File.File
			}
		}
		g.chain = append(g.chain, sn)
		n = max(n, r+1)
	}
	sort.Slice(g.chain, func(i, j int) bool { return g.chain[i].name < g.chain[j].name })
	return g, n, nil
}

func vda(x *libvirtxml.Domain) string {
	if x == nil || x.Devices == nil {
		return ""
	}
	for _, dk := range x.Devices.Disks {
		if dk.Target != nil && dk.Target.Dev == "vda" && dk.Source != nil && dk.Source.File != nil {
			return dk.Source.File.File
		}
	}
	return ""
}

func (g *guest) round(l *golibvirt.Libvirt, events <-chan interface{}, r, keep int, mode string) error {
	name := fmt.Sprintf("autofloor%06d", r)
	overlay := filepath.Join(filepath.Dir(g.active), fmt.Sprintf("%s-vda.%s.qcow2", g.dom.Name, name))
	x := fmt.Sprintf(`<domainsnapshot><name>%s</name><description>autosnap</description><memory snapshot='no'/>`+
		`<disks><disk name='vda' snapshot='external'><driver type='qcow2'/><source file='%s'/></disk></disks></domainsnapshot>`, name, overlay)
	s, err := l.DomainSnapshotCreateXML(g.dom, x, uint32(golibvirt.DomainSnapshotCreateDiskOnly|golibvirt.DomainSnapshotCreateAtomic))
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	g.chain = append(g.chain, snap{name: name, overlay: overlay, state: g.active, snap: s})
	g.active = overlay
	if len(g.chain) <= keep {
		return nil
	}
	old, child := g.chain[0], &g.chain[1]
	if mode == "native" {
		if err := l.DomainSnapshotDelete(old.snap, 0); err != nil {
			return fmt.Errorf("delete %s: %w", old.name, err)
		}
	} else {
		if err := l.DomainBlockCommit(g.dom, "vda", golibvirt.OptString{old.state}, golibvirt.OptString{old.overlay}, 0, golibvirt.DomainBlockCommitDelete); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		if err := waitJob(events, g.dom); err != nil {
			return err
		}
		raw, err := l.DomainSnapshotGetXMLDesc(child.snap, uint32(golibvirt.DomainSnapshotXMLSecure))
		if err != nil {
			return err
		}
		var cx libvirtxml.DomainSnapshot
		if err := cx.Unmarshal(raw); err != nil {
			return err
		}
		for i := range cx.Domain.Devices.Disks {
			dk := &cx.Domain.Devices.Disks[i]
			if dk.Source != nil && dk.Source.File != nil && dk.Source.File.File == old.overlay {
				dk.Source.File.File = old.state
				dk.BackingStore = nil
			}
		}
		cx.Parent = nil
		out, err := cx.Marshal()
		if err != nil {
			return err
		}
		flags := golibvirt.DomainSnapshotCreateRedefine
		if len(g.chain) == 2 {
			flags |= golibvirt.DomainSnapshotCreateCurrent
		}
		if _, err := l.DomainSnapshotCreateXML(g.dom, out, uint32(flags)); err != nil {
			return fmt.Errorf("redefine %s: %w", child.name, err)
		}
		if err := l.DomainSnapshotDelete(old.snap, golibvirt.DomainSnapshotDeleteMetadataOnly); err != nil {
			return fmt.Errorf("forget %s: %w", old.name, err)
		}
	}
	child.state = old.state
	g.chain = g.chain[1:]
	return nil
}

// waitJob waits for dom's block job to end.
func waitJob(events <-chan interface{}, dom golibvirt.Domain) error {
	timeout := time.After(5 * time.Minute)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return fmt.Errorf("event stream closed")
			}
			m, ok := ev.(*golibvirt.DomainEventCallbackBlockJobMsg)
			if !ok || m.Msg.Dom.Name != dom.Name {
				continue
			}
			switch golibvirt.ConnectDomainEventBlockJobStatus(m.Msg.Status) {
			case golibvirt.DomainBlockJobCompleted:
				return nil
			case golibvirt.DomainBlockJobFailed, golibvirt.DomainBlockJobCanceled:
				return fmt.Errorf("block commit on %s ended with status %d", m.Msg.Path, m.Msg.Status)
			}
		case <-timeout:
			return fmt.Errorf("no block job event for %s", dom.Name)
		}
	}
}
