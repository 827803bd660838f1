package daemon_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/autosnap/autosnap/internal/daemon"
	"github.com/autosnap/autosnap/internal/policy"
)

func TestNewLogger(t *testing.T) {
	for _, c := range []struct {
		format  string
		journal bool
		check   func(string) bool
	}{
		{"text", false, func(s string) bool { return strings.HasPrefix(s, "time=") && strings.Contains(s, "policy=web") }},
		{"text", true, func(s string) bool { return strings.HasPrefix(s, "level=INFO ") && !strings.Contains(s, "time=") }},
		{"json", true, func(s string) bool {
			var m map[string]any
			return json.Unmarshal([]byte(s), &m) == nil && m["time"] != nil && m["policy"] == "web"
		}},
	} {
		var b bytes.Buffer
		log, err := daemon.NewLogger(&b, c.format, slog.LevelInfo, c.journal)
		if err != nil {
			t.Fatal(err)
		}
		log.Info("job started", "policy", "web")
		log.Debug("hidden")
		if !c.check(b.String()) || strings.Contains(b.String(), "hidden") {
			t.Errorf("format %s journal %v: %q", c.format, c.journal, b.String())
		}
	}
	if _, err := daemon.NewLogger(&bytes.Buffer{}, "xml", slog.LevelInfo, false); err == nil {
		t.Error("--log-format xml accepted")
	}
}

func TestConnectionConfig(t *testing.T) {
	t.Setenv("AST_PVE_PW", "pw-secret")
	t.Setenv("AST_PVE_TOKEN", "tok-secret")
	cfg := &policy.Config{StateDir: "/var/lib/x", Connections: []policy.Connection{
		{Name: "pve", Host: "pve1,pve2", User: "autosnap@pve", Secret: "env:AST_PVE_PW", Fingerprint: "AA:BB"},
		{Name: "tok", Host: "pve3", User: "autosnap@pve!daemon", Secret: "env:AST_PVE_TOKEN"},
		{Name: "tok2", Host: "pve4", APIToken: "env:AST_PVE_TOKEN"},
		{Name: "bad", Host: "pve5", User: "x", Secret: "env:AST_UNSET_VARIABLE"},
	}}
	for _, c := range []struct {
		host                                string
		wantHost, user, pass, token, finger string
	}{
		{"pve", "pve1,pve2", "autosnap@pve", "pw-secret", "", "AA:BB"},
		{"tok", "pve3", "", "", "autosnap@pve!daemon=tok-secret", ""},
		{"tok2", "pve4", "", "", "tok-secret", ""},
		{"qemu:///system", "qemu:///system", "", "", "", ""},
	} {
		dc, err := daemon.ConnectionConfig(cfg, c.host)
		if err != nil {
			t.Fatalf("%s: %v", c.host, err)
		}
		if dc.Host != c.wantHost || dc.Username != c.user || dc.Password != c.pass || dc.APIToken != c.token ||
			dc.Fingerprint != c.finger || dc.StateDir != "/var/lib/x" {
			t.Errorf("%s: %+v", c.host, dc)
		}
	}
	_, err := daemon.ConnectionConfig(cfg, "bad")
	if err == nil || !strings.Contains(err.Error(), "connection bad") {
		t.Errorf("unset secret variable: %v", err)
	}
}
