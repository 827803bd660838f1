package cli

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/rpctrace"
	"github.com/autosnap/autosnap/internal/testbed"
)

// proxied starts an rpctrace proxy in front of libvirtd and returns it; --host
// p.URI() sends a command's RPCs through it.
func proxied(t *testing.T) *rpctrace.Proxy {
	t.Helper()
	p, err := rpctrace.Start(filepath.Join(t.TempDir(), "libvirt.sock"), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// TestPerfIncNoCheckpointValidation: an inc of a running guest whose repository chain
// holds a full and an inc (two checkpoints on the guest) makes no checkpoint
// redefinition: libvirt validates the checkpoint the inc starts from inside
// backup-begin, so the separate validation (a libvirt job rewriting the checkpoint's
// metadata, one per checkpoint: 2 here) is gone. The only DomainCheckpointCreateXML
// left would be a failed validation's; the new checkpoint is made by backup-begin.
// The old code made one validation per checkpoint.
func TestPerfIncNoCheckpointValidation(t *testing.T) {
	bed := testbed.Libvirt(t)
	dom := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 64})
	dir := t.TempDir()
	dom.WriteDisk(t, "vda", 0, 0x11, 1<<20)
	if r := backupRun(t, dom, dir, "--quiesce", "off"); r.Level != "full" {
		t.Fatalf("first backup: %+v, want a full", r)
	}
	dom.WriteDisk(t, "vda", 4<<20, 0x12, 1<<20)
	if r := backupRun(t, dom, dir, "--quiesce", "off"); r.Level != "inc" {
		t.Fatalf("second backup: %+v, want an inc", r)
	}
	dom.WriteDisk(t, "vda", 8<<20, 0x13, 1<<20)
	p := proxied(t)
	r := mustRun(t, "--host", p.URI(), "-o", "json", "--vmid", dom.Name, "backup", "--target", dir, "--quiesce", "off")
	var rows []struct {
		Level string `json:"level"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || len(rows) != 1 || rows[0].Level != "inc" {
		t.Fatalf("third backup is no inc (%v):\n%s", err, r.stdout)
	}
	t.Logf("RPCs of the inc:\n%s", rpctrace.Format(p.Stats(), 0))
	if n := p.Calls("DomainCheckpointCreateXML"); n != 0 {
		t.Errorf("the inc validated checkpoints with %d DomainCheckpointCreateXML calls, want 0", n)
	}
	if n := p.Calls("DomainBackupBegin"); n != 1 {
		t.Errorf("the inc made %d DomainBackupBegin calls, want 1", n)
	}
	// --vmid NAME looks the guest up by name instead of listing every domain.
	if n := p.Calls("ConnectGetAllDomainStats"); n != 0 {
		t.Errorf("--vmid %s listed every domain (%d ConnectGetAllDomainStats calls), want a lookup by name", dom.Name, n)
	}
	// A name in another case is no libvirt name: the full list finds it, as before.
	p.Reset()
	up := strings.ToUpper(dom.Name)
	r = mustRun(t, "--host", p.URI(), "--vmid", up, "backup", "--target", dir, "--quiesce", "off", "--dry-run")
	if !strings.Contains(r.stdout, "would take an inc") {
		t.Errorf("--vmid %s --dry-run: want an inc of %s\n%s", up, dom.Name, r.stdout)
	}
	if n := p.Calls("ConnectGetAllDomainStats"); n != 1 {
		t.Errorf("--vmid %s: %d ConnectGetAllDomainStats calls, want 1 (the fallback to the full list)", up, n)
	}
}

// TestPerfIncUnusableCheckpointFallsBack: the check that moved into backup-begin still
// decides the level. After QEMU is killed (its loaded bitmaps stay marked in use, so
// the next QEMU finds them inconsistent), backup --level inc fails saying why and asks
// for a full, leaving no point and no new checkpoint, and --level auto takes a full
// naming the unusable checkpoint; the chain then continues with an inc.
func TestPerfIncUnusableCheckpointFallsBack(t *testing.T) {
	bed := testbed.Libvirt(t)
	dom := bed.NewDomain(t, testbed.DomainSpec{State: testbed.Paused, DiskMiB: 64})
	dir := t.TempDir()
	dom.WriteDisk(t, "vda", 0, 0x21, 1<<20)
	if r := backupRun(t, dom, dir, "--quiesce", "off"); r.Level != "full" {
		t.Fatalf("first backup: %+v, want a full", r)
	}
	// A clean stop stores the bitmap; the next QEMU loads it and marks it in use.
	if err := bed.Conn.DomainDestroyFlags(dom.Dom, golibvirt.DomainDestroyGraceful); err != nil {
		t.Fatal(err)
	}
	start := func() {
		t.Helper()
		if _, err := bed.Conn.DomainCreateWithFlags(dom.Dom, uint32(golibvirt.DomainStartPaused)); err != nil {
			t.Fatal(err)
		}
	}
	start()
	dom.WriteDisk(t, "vda", 2<<20, 0x22, 1<<20)
	b, err := os.ReadFile("/run/libvirt/qemu/" + dom.Name + ".pid")
	if err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("kill", "-9", strings.TrimSpace(string(b))).Run(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, _, err := bed.Conn.DomainGetState(dom.Dom, 0)
		if err == nil && golibvirt.DomainState(st) == golibvirt.DomainShutoff {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the domain did not stop after its QEMU was killed")
		}
		time.Sleep(100 * time.Millisecond)
	}
	start()
	cps := func() string {
		t.Helper()
		out, err := exec.Command("virsh", "-c", "qemu:///system", "checkpoint-list", dom.Name, "--name").CombinedOutput()
		if err != nil {
			t.Fatalf("virsh checkpoint-list: %v\n%s", err, out)
		}
		return strings.Join(strings.Fields(string(out)), " ")
	}
	before := cps()
	r := run(t, "--vmid", dom.Name, "backup", "--target", dir, "--quiesce", "off", "--level", "inc")
	if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "cannot be used") || !strings.Contains(r.stdout+r.stderr, "--level full") {
		t.Fatalf("explicit inc from an inconsistent bitmap: exit %d, want a failure saying the checkpoint cannot be used and to take a full", r.code)
	}
	if after := cps(); after != before {
		t.Errorf("the refused inc changed the checkpoints: %q -> %q", before, after)
	}
	row := backupRun(t, dom, dir, "--quiesce", "off")
	if row.Level != "full" || !strings.Contains(row.FullReason, "cannot be used") || !strings.Contains(row.FullReason, before) {
		t.Fatalf("auto after an inconsistent bitmap: %+v, want a full naming checkpoint %s as unusable", row, before)
	}
	if row := backupRun(t, dom, dir, "--quiesce", "off"); row.Level != "inc" {
		t.Fatalf("auto after the new full: %+v, want an inc", row)
	}
	if got := cps(); strings.Contains(got, before) {
		t.Errorf("the unusable checkpoint %s is still there: %s", before, got)
	}
}
