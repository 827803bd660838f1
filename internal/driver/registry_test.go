package driver

import (
	"context"
	"strings"
	"testing"
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
	Register("libvirt-test-only", func(h string) bool { return IsLibvirtURI(h) }, func(ctx context.Context, cfg Config) (Driver, error) {
		return nil, context.Canceled
	})
	Register("pve-test-only", func(h string) bool { return SchemeOf(h) == "pve" }, func(ctx context.Context, cfg Config) (Driver, error) {
		return nil, context.Canceled
	})
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
