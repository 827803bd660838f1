package cli

import (
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/autosnap/autosnap/internal/pveemu"
)

// cv4pve-autosnap's option spellings become cobra's: --name:value, a boolean's
// true/false after a space (also from an @file), -? and /? for help.
func TestExpandOptionSpellings(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	writeArgFile(t, dir, "tf", "TRUE\n--only-running\n")
	root, _ := NewRootCommand(io.Discard, io.Discard)
	for _, c := range []struct{ in, want []string }{
		{[]string{"--state", "true", "snap"}, []string{"--state=true", "snap"}},
		{[]string{"snap", "--state", "False", "--label", "x"}, []string{"snap", "--state=false", "--label", "x"}},
		{[]string{"--validate-certificate", "false", "status"}, []string{"--validate-certificate=false", "status"}},
		{[]string{"--dry-run", "snap"}, []string{"--dry-run", "snap"}},
		{[]string{"--label", "true", "--keep", "1"}, []string{"--label", "true", "--keep", "1"}},
		{[]string{"snap", "--state", "@tf"}, []string{"snap", "--state=true", "--only-running"}},
		{[]string{"--host:pve1:8006", "-o:json", "status", "--label:daily"}, []string{"--host=pve1:8006", "-o=json", "status", "--label=daily"}},
		{[]string{"--host=a:b"}, []string{"--host=a:b"}},
		{[]string{"--state:true"}, []string{"--state=true"}},
		{[]string{"--nosuch:x", "--state", "--", "true"}, []string{"--nosuch:x", "--state", "--", "true"}},
		{[]string{"-?"}, []string{"--help"}},
		{[]string{"snap", "/?"}, []string{"snap", "--help"}},
		{[]string{"status", "/h"}, []string{"status", "--help"}},
		{[]string{"--vmid", "/h"}, []string{"--vmid", "/h"}},
		{[]string{"--vmid", "-?"}, []string{"--vmid", "-?"}},
	} {
		got, err := expandArgs(root, c.in, io.Discard)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("expandArgs(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

// Every cv4pve-autosnap global option is accepted with every command, before or
// after the command name; --state true / --validate-certificate false take the value
// after a space; --version and -? work.
func TestPVECv4pveOptionPlacement(t *testing.T) {
	e := newPVE(t)
	e.c.AddStorage("pve1", "full", "zfspool", 100<<30, 97<<30, true, "images,rootdir")
	e.c.AddGuest(pveemu.Guest{Node: "pve1", VMID: 100, Name: "web1", Kind: "qemu", Status: "running",
		Disks: map[string]string{"scsi0": "full:vm-100-disk-0,size=8G"}})
	globals := []string{"--vmid", "100", "--timeout", "30", "--max-perc-storage", "98", "--max-parallel", "1", "--log-level", "Warning"}
	for _, cmd := range [][]string{
		{"snap", "--label", "pl", "--keep", "3"},
		{"status", "--label", "pl"},
		{"clean", "--label", "pl", "--keep", "3"},
	} {
		// Before the command, as cv4pve-autosnap requires, and after it.
		e.mustRun(t, append(slices.Clone(globals), cmd...)...)
		e.mustRun(t, append(slices.Clone(cmd), globals...)...)
		e.mustRun(t, append(append([]string{"--dry-run", "--debug"}, globals...), cmd...)...)
		// Every option after the command, the connection options too.
		conn := []string{"--host", e.hosts(), "--api-token", pveTokenID + "=" + pveSecret, "--fingerprint", e.c.Fingerprint(),
			"--timestamp-format", fmtMS, "--dry-run", "--debug"}
		mustRun(t, append(append(slices.Clone(cmd), globals...), conn...)...)
		mustRun(t, append(append(slices.Clone(cmd), globals...), append([]string{"--compat", "cv4pve"}, conn...)...)...)
	}
	if n := len(e.snapNames(100)); n != 2 {
		t.Errorf("%d snapshots, want 2 (two real snap runs)", n)
	}
	// --max-perc-storage before the command reaches snap: 97% full is over 95.
	r := e.run(t, "--max-perc-storage", "95", "--vmid", "100", "snap", "--label", "pl", "--keep", "3")
	if r.code != ExitFailure || !strings.Contains(r.stdout, "97.0% full") {
		t.Errorf("--max-perc-storage 95 before snap: exit %d", r.code)
	}
	if r := e.run(t, "--max-perc-storage", "0", "--vmid", "100", "status"); r.code != ExitUsage {
		t.Errorf("--max-perc-storage 0 with status: exit %d, want %d", r.code, ExitUsage)
	}

	e.mustRun(t, "--vmid", "100", "--max-perc-storage", "98", "snap", "--label", "st", "--keep", "1", "--state", "true")
	e.mustRun(t, "--vmid", "100", "--max-perc-storage", "98", "snap", "--state", "false", "--label", "nost", "--keep", "1")
	for _, s := range e.c.Snapshots(100) {
		if want := strings.HasPrefix(s.Name, "autost"); s.VMState != want {
			t.Errorf("%s: vmstate %v, want %v", s.Name, s.VMState, want)
		}
	}
	if r := e.run(t, "--validate-certificate", "false", "--vmid", "100", "status"); r.code != 0 {
		t.Errorf("--validate-certificate false: exit %d", r.code)
	}
	if r := run(t, "--vmid", "100", "status", "--validate-certificate", "true", "--host", e.hosts(), "--api-token", pveTokenID+"="+pveSecret); r.code != ExitConnect {
		t.Errorf("--validate-certificate true with a self-signed certificate: exit %d, want %d", r.code, ExitConnect)
	}

	v := mustRun(t, "--version")
	if strings.TrimSpace(v.stdout) != Version {
		t.Errorf("--version printed %q, want %q", v.stdout, Version)
	}
	for _, args := range [][]string{{"-?"}, {"snap", "-?"}, {"--vmid", "100", "status", "/?"}} {
		h := mustRun(t, args...)
		if !strings.Contains(h.stdout, "Usage:") || !strings.Contains(h.stdout, "--vmid") {
			t.Errorf("%q: no help:\n%s", args, h.stdout)
		}
	}
	if h := mustRun(t, "snap", "-?"); !strings.Contains(h.stdout, "--label") {
		t.Errorf("snap -? is not snap's help")
	}
}
