package driver

import "context"

// ClusterStorage is one storage of one node as a clustered hypervisor (Proxmox VE)
// reports it cluster-wide: cv4pve-autosnap's compatibility mode prints these before
// snapshotting.
type ClusterStorage struct {
	Node    string
	Storage string
	Type    string // the storage plugin, e.g. lvmthin, zfspool, dir
	Content string // comma-separated content types, e.g. images,rootdir
	Disk    uint64 // bytes used
	MaxDisk uint64 // bytes in all; 0 when unknown
}

// ClusterReporter is implemented by drivers that can report the hypervisor's version
// and every storage of the cluster (Proxmox VE).
type ClusterReporter interface {
	// HypervisorVersion is the version string the hypervisor reports, e.g. "8.2.4".
	HypervisorVersion(ctx context.Context) (string, error)
	// ClusterStorages lists the storages of every node, in the hypervisor's order.
	ClusterStorages(ctx context.Context) ([]ClusterStorage, error)
}

// AgentReporter is implemented by drivers that can tell, without contacting the
// guest, whether a VM's configuration enables its guest agent (Proxmox VE's agent
// option): cv4pve-autosnap's compatibility mode advises enabling it.
type AgentReporter interface {
	AgentEnabled(ctx context.Context, g Guest) (bool, error)
}
