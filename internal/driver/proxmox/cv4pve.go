package proxmox

import (
	"context"
	"fmt"
	"net/url"

	"github.com/autosnap/autosnap/internal/driver"
)

// HypervisorVersion is the version Proxmox VE reports (cv4pve mode prints it): the "version" of GET /version.
func (d *Driver) HypervisorVersion(ctx context.Context) (string, error) {
	var v struct {
		Version string `json:"version"`
	}
	if err := d.c.get(ctx, "/version", nil, &v); err != nil {
		return "", fmt.Errorf("reading the Proxmox VE version: %w", err)
	}
	return v.Version, nil
}

// ClusterStorages lists every node's storages (cv4pve mode's storage table) from GET /cluster/resources?type=storage.
// Storages of offline nodes (status unknown) are left out, as cv4pve-autosnap does.
func (d *Driver) ClusterStorages(ctx context.Context) ([]driver.ClusterStorage, error) {
	var rs []struct {
		Type       string `json:"type"`
		Node       string `json:"node"`
		Storage    string `json:"storage"`
		PluginType string `json:"plugintype"`
		Content    string `json:"content"`
		Status     string `json:"status"`
		Disk       pveInt `json:"disk"`
		MaxDisk    pveInt `json:"maxdisk"`
	}
	if err := d.c.get(ctx, "/cluster/resources", url.Values{"type": {"storage"}}, &rs); err != nil {
		return nil, fmt.Errorf("reading storage usage: %w", err)
	}
	var out []driver.ClusterStorage
	for _, r := range rs {
		if r.Type != "storage" || r.Status == "unknown" {
			continue
		}
		out = append(out, driver.ClusterStorage{Node: r.Node, Storage: r.Storage, Type: r.PluginType, Content: r.Content,
			Disk: uint64(max(r.Disk, 0)), MaxDisk: uint64(max(r.MaxDisk, 0))})
	}
	return out, nil
}

// AgentEnabled reports, without contacting the guest, whether a VM's agent option enables
// the QEMU guest agent (cv4pve mode's advice to enable it). Containers have none.
func (d *Driver) AgentEnabled(ctx context.Context, g driver.Guest) (bool, error) {
	if g.Kind != driver.KindQEMU {
		return false, nil
	}
	cfg, err := d.config(ctx, g)
	if err != nil {
		return false, fmt.Errorf("%s: %w", guestName(g), err)
	}
	return cfg.Agent.Enabled, nil
}
