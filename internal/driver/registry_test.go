package driver

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestSchemeAndLibvirtURI(t *testing.T) {
	cases := []struct {
		host    string
		scheme  string
		libvirt bool
	}{
		{"qemu:///system", "qemu", true},
		{"qemu:///session", "qemu", true},
		{"qemu+ssh://root@kvm1/system", "qemu+ssh", true},
		{"QEMU+TLS://kvm2/system", "qemu+tls", true},
		{"test:///default", "test", true},
		{"pve://pve1:8006", "pve", false},
		{"pve1.example.com:8006", "", false},
		{"10.0.0.1", "", false},
		{"qmp:///run/vm.qmp", "qmp", false},
		{"xen:///system", "xen", false},
	}
	for _, c := range cases {
		if got := SchemeOf(c.host); got != c.scheme {
			t.Errorf("SchemeOf(%q) = %q, want %q", c.host, got, c.scheme)
		}
		if got := IsLibvirtURI(c.host); got != c.libvirt {
			t.Errorf("IsLibvirtURI(%q) = %v, want %v", c.host, got, c.libvirt)
		}
	}
}

func TestOpenErrorsNameTheProblem(t *testing.T) {
	cases := map[string]string{
		"xen:///system":                 "unknown scheme",
		"qmp:///run/x.qmp":              "standalone QEMU",
		"qemu:///system,xen:///system":  "unknown scheme",
		"qemu+ssh://a/system,pve://b:1": "mixes",
	}
	fail := func(ctx context.Context, cfg Config) (Driver, error) { return nil, context.Canceled }
	withRegistry(t, registration{"libvirt", IsLibvirtURI, fail}, registration{"proxmox", func(h string) bool { return SchemeOf(h) == "pve" }, fail})
	for hosts, want := range cases {
		_, err := Open(context.Background(), hosts, Config{})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Open(%q) = %v, want an error mentioning %q", hosts, err, want)
		}
	}
}

func TestSplitHosts(t *testing.T) {
	got := splitHosts(" a , ,b,c ")
	if strings.Join(got, "|") != "a|b|c" {
		t.Errorf("splitHosts = %q", got)
	}
}

// withRegistry replaces the registered drivers for the test and restores them after.
func withRegistry(t *testing.T, rs ...registration) {
	t.Helper()
	regMu.Lock()
	saved := regs
	regs = rs
	regMu.Unlock()
	t.Cleanup(func() {
		regMu.Lock()
		regs = saved
		regMu.Unlock()
	})
}

func TestOpenBuildsAFleetOfEveryHost(t *testing.T) {
	var mu sync.Mutex
	opened := map[string]*closeCounter{}
	withRegistry(t, registration{name: "libvirt", match: IsLibvirtURI, open: func(ctx context.Context, cfg Config) (Driver, error) {
		if strings.Contains(cfg.Host, "down") {
			return (*closeCounter)(nil), fmt.Errorf("cannot connect to %s", cfg.Host)
		}
		if cfg.Timeout != 7*time.Second {
			t.Errorf("host %s opened with timeout %s, want the shared 7s", cfg.Host, cfg.Timeout)
		}
		c := &closeCounter{recorder: recorder{node: cfg.Host}}
		mu.Lock()
		opened[cfg.Host] = c
		mu.Unlock()
		return c, nil
	}})
	d, err := Open(context.Background(), "qemu+ssh://a/system, qemu+ssh://b/system", Config{Timeout: 7 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f, ok := d.(*Fleet)
	if !ok || len(f.members) != 2 || f.members[0] != opened["qemu+ssh://a/system"] || f.members[1] != opened["qemu+ssh://b/system"] {
		t.Fatalf("Open gave %#v, want a Fleet of both hosts in order", d)
	}
	if err := d.Close(); err != nil || opened["qemu+ssh://a/system"].closed != 1 || opened["qemu+ssh://b/system"].closed != 1 {
		t.Errorf("Close: %v; every host must be closed once", err)
	}

	clear(opened)
	_, err = Open(context.Background(), "qemu+ssh://a/system,qemu+ssh://down1/system,qemu+ssh://b/system,qemu+ssh://down2/system", Config{Timeout: 7 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "down1") || !strings.Contains(err.Error(), "down2") {
		t.Errorf("Open with two hosts down: %v, want an error naming both", err)
	}
	for h, c := range opened {
		if c.closed != 1 {
			t.Errorf("host %s was connected but closed %d times after the others failed", h, c.closed)
		}
	}
}

// closeCounter is a recording member that counts Close calls.
type closeCounter struct {
	recorder
	closed int
}

func (c *closeCounter) Close() error {
	c.closed++
	return nil
}
