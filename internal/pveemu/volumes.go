package pveemu

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

var (
	qemuDiskRe = regexp.MustCompile(`^(ide|sata|scsi|virtio)\d+$|^efidisk0$|^tpmstate0$`)
	lxcDiskRe  = regexp.MustCompile(`^rootfs$|^mp\d+$`)
)

// isDiskKey reports whether a config key is a guest volume (unusedN excluded).
func isDiskKey(kind, key string) bool {
	if kind == "lxc" {
		return lxcDiskRe.MatchString(key)
	}
	return qemuDiskRe.MatchString(key)
}

func isCDROM(v string) bool {
	for _, p := range strings.Split(v, ",")[1:] {
		if p == "media=cdrom" {
			return true
		}
	}
	return false
}

// volumeOf splits a disk value "local-lvm:vm-100-disk-0,size=8G" into storage id and
// volume name. ok is false for paths (bind mounts, /dev devices) and "none".
func volumeOf(v string) (storageID, volname string, ok bool) {
	first, _, _ := strings.Cut(v, ",")
	if strings.HasPrefix(first, "/") || first == "none" || first == "" || first == "cdrom" {
		return "", "", false
	}
	// a bare "volume=" key may come first
	first = strings.TrimPrefix(first, "volume=")
	first = strings.TrimPrefix(first, "file=")
	sid, vol, found := strings.Cut(first, ":")
	if !found || strings.HasPrefix(sid, "/") {
		return "", "", false
	}
	return sid, vol, true
}

// diskSize parses the size= option of a disk value, in bytes.
func diskSize(v string) uint64 {
	for _, p := range strings.Split(v, ",") {
		s, ok := strings.CutPrefix(p, "size=")
		if !ok || s == "" {
			continue
		}
		mult := uint64(1)
		switch s[len(s)-1] {
		case 'K', 'k':
			mult = 1 << 10
		case 'M', 'm':
			mult = 1 << 20
		case 'G', 'g':
			mult = 1 << 30
		case 'T', 't':
			mult = 1 << 40
		}
		if mult != 1 {
			s = s[:len(s)-1]
		}
		f, err := strconv.ParseFloat(s, 64)
		if err == nil {
			return uint64(f * float64(mult))
		}
	}
	return 0
}

// volumes lists the guest's volumes that take part in a snapshot: QEMU skips CD-ROMs
// (§7.2); everything else, bind mounts and devices included, must support snapshots.
func (g *guest) volumes() []string {
	var keys []string
	for _, k := range sortedKeys(g.config) {
		if !isDiskKey(g.kind, k) {
			continue
		}
		if g.kind == "qemu" && isCDROM(g.config[k]) {
			continue
		}
		keys = append(keys, k)
	}
	return keys
}

// snapshotCapable reports whether every volume can be snapshotted (§7.2).
func (c *Cluster) snapshotCapable(g *guest) bool {
	for _, k := range g.volumes() {
		sid, vol, ok := volumeOf(g.config[k])
		if !ok {
			return false // bind mount, device or passthrough path
		}
		st := c.storages[g.node][sid]
		if st == nil || !st.snapshots || !st.active || !st.enabled {
			return false
		}
		switch st.plugin {
		case "dir", "nfs", "cifs", "glusterfs", "lvm":
			if !strings.HasSuffix(vol, ".qcow2") {
				return false
			}
		case "iscsi", "iscsidirect", "pbs", "esxi", "cephfs":
			return false
		}
	}
	return true
}

// stateVolume names the RAM state volume of a snapshot: on vmstatestorage, else on the
// storage of the first volume.
func (g *guest) stateVolume(snap string) string {
	sid := "local-lvm"
	for _, k := range g.volumes() {
		if s, _, ok := volumeOf(g.config[k]); ok {
			sid = s
			break
		}
	}
	if v := g.config["vmstatestorage"]; v != "" {
		sid = v
	}
	return fmt.Sprintf("%s:vm-%d-state-%s", sid, g.vmid, snap)
}

func (g *guest) name() string {
	if g.kind == "lxc" {
		return g.config["hostname"]
	}
	return g.config["name"]
}

func (g *guest) template() bool { return g.config["template"] == "1" }

func (g *guest) maxdisk() uint64 {
	var total uint64
	for _, k := range g.volumes() {
		total += diskSize(g.config[k])
	}
	return total
}

func (g *guest) maxmem() uint64 {
	n, _ := strconv.ParseUint(strings.SplitN(g.config["memory"], ",", 2)[0], 10, 64)
	return n << 20
}

func (g *guest) cores() int {
	n, _ := strconv.Atoi(g.config["cores"])
	if n == 0 {
		n = 1
	}
	if s, _ := strconv.Atoi(g.config["sockets"]); s > 1 {
		n *= s
	}
	return n
}

// agentEnabled parses the "agent" property string (§6.1).
func agentEnabled(v string) bool {
	if v == "" {
		return false
	}
	for _, p := range strings.Split(v, ",") {
		k, val, found := strings.Cut(p, "=")
		if !found {
			return parseBoolLoose(k)
		}
		if k == "enabled" {
			return parseBoolLoose(val)
		}
	}
	return false
}

// agentFreezeFS reports the freeze-fs option (aliases freeze-fs-on-backup, guest-fsfreeze).
func agentFreezeFS(v string) bool {
	for _, p := range strings.Split(v, ",") {
		k, val, found := strings.Cut(p, "=")
		if found && (k == "freeze-fs" || k == "freeze-fs-on-backup" || k == "guest-fsfreeze") {
			return parseBoolLoose(val)
		}
	}
	return true
}

func parseBoolLoose(s string) bool {
	switch strings.ToLower(s) {
	case "1", "on", "yes", "true":
		return true
	}
	return false
}
