package daemon

import (
	"context"
	"fmt"
	"strings"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/policy"
)

// Connector opens a connection to one hypervisor. cfg.Host is a --host value; the
// credentials are already resolved.
type Connector func(ctx context.Context, cfg driver.Config) (driver.Driver, error)

// OpenDriver is the default Connector: the driver registry, as the command line uses
// it. The driver packages must be linked in (cmd/autosnap imports them).
func OpenDriver(ctx context.Context, cfg driver.Config) (driver.Driver, error) {
	return driver.Open(ctx, cfg.Host, cfg)
}

// ResolveSecret returns what a policy file's secret reference (`file:`, `env:`)
// stands for (policy.ResolveSecret).
func ResolveSecret(v string) (string, error) { return policy.ResolveSecret(v) }

// ConnectionConfig resolves a policy's host: the name of a connection in cfg, or any
// --host value used as it is. The secret of a user that is a Proxmox VE API token id
// (USER@REALM!ID) is the token's; any other secret is a password.
func ConnectionConfig(cfg *policy.Config, host string) (driver.Config, error) {
	dc := driver.Config{Host: host, StateDir: cfg.StateDir}
	for _, c := range cfg.Connections {
		if c.Name != host {
			continue
		}
		dc.Host, dc.Fingerprint, dc.CAFile, dc.Insecure = c.Host, c.Fingerprint, c.CAFile, c.Insecure
		if c.Secret != "" {
			s, err := ResolveSecret(c.Secret)
			if err != nil {
				return driver.Config{}, fmt.Errorf("connection %s: reading its secret: %w", c.Name, err)
			}
			if strings.Contains(c.User, "!") {
				dc.APIToken = c.User + "=" + s
			} else {
				dc.Username, dc.Password = c.User, s
			}
		} else {
			dc.Username = c.User
		}
		if c.APIToken != "" {
			tok, err := ResolveSecret(c.APIToken)
			if err != nil {
				return driver.Config{}, fmt.Errorf("connection %s: reading its API token: %w", c.Name, err)
			}
			dc.APIToken = tok
		}
		break
	}
	return dc, nil
}
