package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestCVWriter feeds the engine's lines (split at arbitrary points, as the engine's
// buffered guest output arrives) and checks cv4pve's lines come out.
func TestCVWriter(t *testing.T) {
	engineSnap := strings.Join([]string{
		"----- VM 100 qemu running (pve1/web1) -----",
		"hook: snap-create-pre 100", // hook output passes unchanged
		"Snapshot of web1 starts",
		"Create snapshot: autohourly260928070002",
		"Snapshot autohourly260928070002 created (quiesced through the guest agent)",
		"Remove snapshot: autohourly260928050002 (beyond --keep 2)",
		"hook says: bye",
		"WARNING: hook script /etc/hook.sh (phase snap-remove-post) exited with status 3",
		"VM execution 1.2s",
		"----- VM 101 qemu shutoff (pve1/web2) -----",
		"Guest agent not available (the QEMU guest agent is not enabled …): snapshot will be crash-consistent only",
		"Create snapshot: autohourly260928070002",
		"ERROR: guest web2: creating snapshot autohourly260928070002: Proxmox VE task qmsnapshot on node pve1 failed: VM is locked (backup)",
		"VM execution 3ms",
		"----- VM 102 qemu running (pve1/web3) -----",
		"Skip VM '--only-running' parameter used!",
		"VM execution 1ms",
		"----- VM 103 qemu paused (pve1/p) -----",
		"Create snapshot: autohourly260928070002",
		"ERROR: guest p: Proxmox VE task qmsnapshot on node pve1 was still running after 30s; PVE continues it: context deadline exceeded",
		"VM execution 30s",
		"----- VM 104 qemu running (pve2/full) -----",
		"ERROR: guest full: skipped: storage pve2/tank is 97.0% full, above --max-perc-storage 95%: free space or raise the limit",
		"VM execution 1ms",
		"----- VM 105 lxc unknown (pve3/gone) -----",
		"ERROR: guest 105: status unknown: its host pve3 is offline or not reachable",
		"VM execution 0s",
		"----- VM 107 lxc running (pve2/ct) -----",
		"Skip VM ct: cannot snapshot: mp0 is a bind mount (/mnt/host); Proxmox VE snapshots only storage volumes: exclude the guest (--vmid …,-107) or move the data to a volume: not supported",
		"VM execution 0s",
		"----- VM 106 qemu running (pve1/x) -----",
		"Dry run: would create autohourly260928070002 (crash-consistent)",
		"Keep snapshot: autohourly260928060002 (newest 2)",
		"ERROR: guest x: listing snapshots: 500 Internal Server Error",
		"VM execution 0s",
		"",
	}, "\n")
	want := strings.Join([]string{
		"----- VM 100 qemu running -----",
		"hook: snap-create-pre 100",
		"Snapshot of web1 starts",
		"Create snapshot: autohourly260928070002",
		"Remove snapshot: autohourly260928050002",
		"hook says: bye", // the hook runner prints "Script return code: 3" itself; the engine's warning is dropped
		"VM execution 00:00:00.2500000",
		"----- VM 101 qemu stopped -----",
		"VM 101 consider enabling QEMU agent see https://pve.proxmox.com/wiki/Qemu-guest-agent",
		"Create snapshot: autohourly260928070002",
		"Error in task: VM is locked (backup)",
		"----- VM 102 qemu running -----",
		"Skip VM '--only-running' parameter used!",
		"----- VM 103 qemu running -----",
		"Create snapshot: autohourly260928070002",
		"Error task in run... increase the timeout!",
		"----- VM 104 qemu running -----",
		"VM 104 consider enabling QEMU agent see https://pve.proxmox.com/wiki/Qemu-guest-agent",
		"Skip VM problem storage space out of 95%",
		"----- VM 105 lxc unknown -----",
		"Skip VM status unknown: node offline or not reachable",
		"----- VM 107 lxc running -----",
		"Skip VM Proxmox VE cannot snapshot it, bind mount or device: mp0",
		"----- VM 106 qemu running -----",
		"guest x: listing snapshots: 500 Internal Server Error",
		"",
	}, "\n")
	clk := &cvClock{t: time.Unix(0, 0), step: 250 * time.Millisecond}
	var out bytes.Buffer
	w := &cvWriter{w: &out, maxPerc: "95", now: clk.now, agentOff: map[string]bool{"101": true, "102": true, "104": true}}
	for chunk := range slicesOf(engineSnap, 7) {
		if _, err := w.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if out.String() != want {
		t.Errorf("snap lines:\n%s\nwant:\n%s", out.String(), want)
	}

	engineClean := strings.Join([]string{
		"----- VM 100 qemu running (pve1/web1) -----",
		"Remove snapshot: autohourly260928050002 (beyond --keep 1)",
		"VM execution 1.2s",
		"----- VM 102 qemu shutoff (pve1/tpl) -----",
		"Skip VM is template",
		"VM execution 0s",
		"----- VM 200 lxc running (pve2/ct) -----",
		"VM execution 0s",
		"----- VM 201 lxc running (pve2/ct2) -----",
	}, "\n") // the last guest's line unterminated: Flush writes it
	wantClean := strings.Join([]string{
		"----- VM 100 qemu -----",
		"Remove snapshot: autohourly260928050002",
		"----- VM 102 qemu -----",
		"Skip VM is template",
		"----- VM 200 lxc -----",
		"----- VM 201 lxc -----",
		"",
	}, "\n")
	out.Reset()
	w = &cvWriter{w: &out, clean: true, now: clk.now}
	if _, err := w.Write([]byte(engineClean)); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if out.String() != wantClean {
		t.Errorf("clean lines:\n%s\nwant:\n%s", out.String(), wantClean)
	}

	// Without an injected clock the engine's own measure is shown.
	out.Reset()
	w = &cvWriter{w: &out}
	in := "----- VM 100 qemu running (pve1/a) -----\nVM execution 1.234s\n----- VM 101 qemu running (pve1/b) -----\nVM execution 26h3m4.5s\n"
	if _, err := w.Write([]byte(in)); err != nil {
		t.Fatal(err)
	}
	want = "----- VM 100 qemu running -----\nVM execution 00:00:01.2340000\n----- VM 101 qemu running -----\nVM execution 1.02:03:04.5000000\n"
	if out.String() != want {
		t.Errorf("engine durations:\n%s\nwant:\n%s", out.String(), want)
	}
}

// slicesOf yields s in pieces of n bytes.
func slicesOf(s string, n int) func(func(string) bool) {
	return func(yield func(string) bool) {
		for len(s) > 0 {
			k := min(n, len(s))
			if !yield(s[:k]) {
				return
			}
			s = s[k:]
		}
	}
}
