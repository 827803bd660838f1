package pveemu

import (
	"fmt"
	"time"
)

// SeedDemo fills the cluster with a realistic mix for demos: on every node the storages
// local (dir), local-lvm (lvmthin) and the shared ceph-vm (rbd); local-zfs (zfspool) on
// every second node; then n guests (about two VMs per container) with names, tags, pools
// (prod, dev and the nested prod/web), a few stopped guests, a template, a container with
// a bind mount (not snapshottable) and a VM whose agent is configured but not running.
// VMIDs start at 100; each guest also gets a little disk content and, for some, an older
// manual snapshot.
func (c *Cluster) SeedDemo(n int) {
	nodes := c.Nodes()
	for i, nd := range nodes {
		c.AddStorage(nd, "local", "dir", 100<<30, 14<<30, true, "iso,vztmpl,backup")
		c.AddStorage(nd, "local-lvm", "lvmthin", 800<<30, uint64(180+40*i)<<30, true, "images,rootdir")
		c.AddStorage(nd, "ceph-vm", "rbd", 4<<40, 1<<40, true, "images,rootdir")
		if i%2 == 1 {
			c.AddStorage(nd, "local-zfs", "zfspool", 1<<40, 300<<30, true, "images,rootdir")
		}
	}
	c.SetPoolComment("prod", "production services")
	c.SetPoolComment("dev", "development and CI")
	roles := []struct {
		name, kind string
		tags       []string
		pool       string
	}{
		{"web", "qemu", []string{"prod", "web"}, "prod/web"},
		{"db", "qemu", []string{"prod", "db"}, "prod"},
		{"cache", "lxc", []string{"prod", "cache"}, "prod"},
		{"ci-runner", "qemu", []string{"dev", "ci"}, "dev"},
		{"dns", "lxc", []string{"infra"}, ""},
		{"proxy", "lxc", []string{"prod", "web"}, "prod/web"},
		{"git", "qemu", []string{"dev"}, "dev"},
		{"monitor", "qemu", []string{"infra", "monitoring"}, ""},
		{"mail", "qemu", []string{"prod"}, "prod"},
	}
	count := map[string]int{}
	for i := 0; i < n; i++ {
		vmid := 100 + i
		nd := nodes[i%len(nodes)]
		r := roles[i%len(roles)]
		count[r.name]++
		name := fmt.Sprintf("%s%d", r.name, count[r.name])
		g := Guest{Node: nd, VMID: vmid, Name: name, Kind: r.kind, Status: "running", Tags: r.tags, Pool: r.pool}
		storage := "local-lvm"
		if i%4 == 3 {
			storage = "ceph-vm"
		} else if i%len(nodes) == 1 && i%3 == 0 {
			storage = "local-zfs"
		}
		if r.kind == "qemu" {
			g.Agent = "1"
			g.AgentRunning = true
			g.Disks = map[string]string{
				"scsi0": fmt.Sprintf("%s:vm-%d-disk-0,iothread=1,size=32G", storage, vmid),
				"ide2":  "none,media=cdrom",
			}
			if i%5 == 4 {
				g.Disks["efidisk0"] = fmt.Sprintf("%s:vm-%d-disk-1,efitype=4m,size=4M", storage, vmid)
				g.Config = map[string]string{"bios": "ovmf"}
			}
		} else {
			g.Disks = map[string]string{"rootfs": fmt.Sprintf("%s:subvol-%d-disk-0,size=8G", storage, vmid)}
		}
		switch i {
		case 5:
			g.Status = "stopped"
		case 7:
			g.AgentRunning = false // configured but not answering
		case 11:
			if r.kind == "lxc" {
				g.Disks["mp0"] = "/srv/share,mp=/data"
			}
		}
		c.AddGuest(g)
		c.WriteDisk(vmid, diskKeyFor(r.kind), 0, []byte(fmt.Sprintf("%s initial data\n", name)))
		if i%3 == 1 {
			c.AddSnapshot(vmid, "before-upgrade", "manual snapshot before apt dist-upgrade", time.Now().Add(-72*time.Hour), false)
		}
	}
	if n > 0 {
		c.AddGuest(Guest{Node: nodes[0], VMID: 9000, Name: "debian12-template", Kind: "qemu",
			Status: "stopped", Template: true, Tags: []string{"template"}, Agent: "1"})
	}
}

func diskKeyFor(kind string) string {
	if kind == "lxc" {
		return "rootfs"
	}
	return "scsi0"
}
