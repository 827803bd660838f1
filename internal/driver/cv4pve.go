package driver

// ClusterStorage is one storage of one node as a clustered hypervisor (Proxmox VE)
// reports it cluster-wide: cv4pve-autosnap's compatibility mode prints these before
// snapshotting (the proxmox driver's ClusterStorages).
type ClusterStorage struct {
	Node    string
	Storage string
	Type    string // the storage plugin, e.g. lvmthin, zfspool, dir
	Content string // comma-separated content types, e.g. images,rootdir
	Disk    uint64 // bytes used
	MaxDisk uint64 // bytes in all; 0 when unknown
}
