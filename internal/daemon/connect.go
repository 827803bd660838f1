package daemon

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/policy"
	"github.com/autosnap/autosnap/internal/secret"
)

// Connector opens a connection to one hypervisor. cfg.Host is a --host value; the
// credentials are already resolved.
type Connector func(ctx context.Context, cfg driver.Config) (driver.Driver, error)

// OpenDriver is the default Connector: the driver registry, as the command line uses
// it. The driver packages must be linked in (cmd/autosnap imports them).
func OpenDriver(ctx context.Context, cfg driver.Config) (driver.Driver, error) {
	return driver.Open(ctx, cfg.Host, cfg)
}

// ResolveSecret returns the secret a policy file value stands for: `env:NAME` reads
// the environment variable NAME, `file:PATH` and literal values are read as --password
// reads them (secret.Resolve). An unset variable is an error naming it.
func ResolveSecret(v string) (string, error) {
	if name, ok := strings.CutPrefix(v, "env:"); ok {
		s, set := os.LookupEnv(name)
		if !set {
			return "", fmt.Errorf("environment variable %s is not set", name)
		}
		return s, nil
	}
	return secret.Resolve(v)
}

// ConnectionConfig resolves a policy's host: the name of a connection in cfg, or any
// --host value used as it is. A secret that belongs to a Proxmox VE API token id
// (USER@REALM!ID) becomes the token; any other secret is a password.
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
		break
	}
	return dc, nil
}
