package cli

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"

	"github.com/autosnap/autosnap/internal/daemon"
	"github.com/autosnap/autosnap/internal/history"
	"github.com/autosnap/autosnap/internal/policy"
	"github.com/autosnap/autosnap/internal/web"
)

// mountDashboard mounts the web dashboard at "/" on the daemon's mux and returns the
// TLS configuration of the listener (nil: plain HTTP). A dashboard that would be
// served off loopback without TLS and authentication is not mounted: the error is
// logged and only /metrics is served. A TLS certificate or token that cannot be read
// is an error.
func mountDashboard(d *daemon.Daemon, r history.Reader, cfg *policy.Config, addr string, log *slog.Logger) (*tls.Config, error) {
	dc := cfg.Dashboard
	var tlsCfg *tls.Config
	if dc.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(dc.TLSCert, dc.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("dashboard: loading the TLS certificate %s and key %s: %w", dc.TLSCert, dc.TLSKey, err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	token, err := policy.ResolveSecret(dc.Token)
	if err != nil {
		return nil, fmt.Errorf("dashboard: reading the token: %w", err)
	}
	h, err := web.New(daemon.NewWebBackend(d, r), web.Options{Addr: addr, TLS: tlsCfg != nil, Token: token, Users: dc.Users,
		Warning: cfg.Monitor.Warning, Critical: cfg.Monitor.Critical})
	if errors.Is(err, web.ErrInsecure) {
		log.Error("the dashboard is not served; /metrics is", "err", err,
			"fix", "set dashboard: tls_cert, tls_key and token or users in "+cfg.Path+" (docs/dashboard.md), or listen on 127.0.0.1")
		return tlsCfg, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	d.Handle("/", h)
	log.Info("serving the dashboard", "addr", addr, "tls", tlsCfg != nil, "auth", token != "" || len(dc.Users) > 0)
	return tlsCfg, nil
}
