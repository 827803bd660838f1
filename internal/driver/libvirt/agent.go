package libvirt

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/driver"
)

// agentTimeout derives the agent's own timeout (whole seconds, at least 1) from ctx so
// libvirt gives up no later than we do.
func agentTimeout(ctx context.Context, max time.Duration) int32 {
	t := max
	if dl, ok := ctx.Deadline(); ok {
		if r := time.Until(dl); r < t {
			t = r
		}
	}
	if t < time.Second {
		return 1
	}
	return int32(t / time.Second)
}

func (d *Driver) agentCommand(ctx context.Context, g driver.Guest, cmd string, max time.Duration) (json.RawMessage, error) {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return nil, err
	}
	res, err := call(ctx, func() (golibvirt.OptString, error) {
		return d.l.QEMUDomainAgentCommand(dom, cmd, agentTimeout(ctx, max), 0)
	})
	if err != nil {
		return nil, fmt.Errorf("guest %s: agent: %v: %w", g.Name, err, driver.ErrAgent)
	}
	if len(res) == 0 {
		return nil, fmt.Errorf("guest %s: agent returned nothing: %w", g.Name, driver.ErrAgent)
	}
	var reply struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal([]byte(res[0]), &reply); err != nil {
		return nil, fmt.Errorf("guest %s: agent reply unreadable: %w", g.Name, err)
	}
	return reply.Return, nil
}

// AgentPing implements driver.AgentPinger with guest-ping (at most 2 s).
func (d *Driver) AgentPing(ctx context.Context, g driver.Guest) error {
	_, err := d.agentCommand(ctx, g, `{"execute":"guest-ping"}`, 2*time.Second)
	return err
}

// Freeze implements driver.Quiescer.
func (d *Driver) Freeze(ctx context.Context, g driver.Guest) (int, error) {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return 0, err
	}
	n, err := call(ctx, func() (int32, error) { return d.l.DomainFsfreeze(dom, nil, 0) })
	if err != nil {
		return 0, fmt.Errorf("guest %s: freezing filesystems: %v: %w", g.Name, err, driver.ErrAgent)
	}
	return int(n), nil
}

// Thaw implements driver.Quiescer.
func (d *Driver) Thaw(ctx context.Context, g driver.Guest) (int, error) {
	dom, err := d.lookup(ctx, g)
	if err != nil {
		return 0, err
	}
	n, err := call(ctx, func() (int32, error) { return d.l.DomainFsthaw(dom, nil, 0) })
	if err != nil {
		return 0, fmt.Errorf("guest %s: thawing filesystems: %v: %w", g.Name, err, driver.ErrAgent)
	}
	return int(n), nil
}

// FrozenState implements driver.Quiescer with guest-fsfreeze-status.
func (d *Driver) FrozenState(ctx context.Context, g driver.Guest) (bool, error) {
	raw, err := d.agentCommand(ctx, g, `{"execute":"guest-fsfreeze-status"}`, 2*time.Second)
	if err != nil {
		return false, err
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return false, fmt.Errorf("guest %s: fsfreeze status unreadable: %w", g.Name, err)
	}
	return s == "frozen", nil
}
