package proxmox

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/autosnap/autosnap/internal/driver"
)

// AgentPing implements driver.AgentPinger: nil when the VM's QEMU guest agent is
// enabled in its options and answers, so that PVE freezes its filesystems for a
// snapshot without RAM. Otherwise the error wraps driver.ErrAgent and says why;
// for a VM whose agent is not enabled it carries cv4pve-autosnap's advice to enable
// it. Containers have no agent.
func (d *Driver) AgentPing(ctx context.Context, g driver.Guest) error {
	if err := d.agentPing(ctx, g); err != nil {
		return fmt.Errorf("%s: %w", guestName(g), err)
	}
	return nil
}

func (d *Driver) agentPing(ctx context.Context, g driver.Guest) error {
	if g.Kind == driver.KindLXC {
		return fmt.Errorf("containers have no guest agent (Proxmox VE freezes a running container's processes during a snapshot, without flushing filesystems): %w", driver.ErrAgent)
	}
	cfg, err := d.config(ctx, g)
	if err != nil {
		return fmt.Errorf("%w: %w", err, driver.ErrAgent)
	}
	if !cfg.Agent.Enabled {
		return fmt.Errorf("%s: %w", agentDisabledAdvice(g, cfg.Agent), driver.ErrAgent)
	}
	if cfg.Agent.NoFreeze {
		return fmt.Errorf("its agent option %q disables the filesystem freeze for snapshots: %w", cfg.Agent.Raw, driver.ErrAgent)
	}
	return d.ping(ctx, g)
}

// ping asks PVE to ping the VM's agent.
func (d *Driver) ping(ctx context.Context, g driver.Guest) error {
	_, err := d.c.do(ctx, http.MethodPost, guestPath(g)+"/agent/ping", nil, nil)
	if err == nil {
		return nil
	}
	var ae *apiError
	if errors.As(err, &ae) && ae.Status == http.StatusInternalServerError {
		return fmt.Errorf("the guest agent does not answer (%s): %w", ae.Msg, driver.ErrAgent)
	}
	return fmt.Errorf("pinging the guest agent: %w: %w", err, driver.ErrAgent)
}
