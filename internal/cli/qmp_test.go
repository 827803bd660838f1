package cli

// End-to-end tests of the commands on standalone QEMU guests reached through their QMP
// sockets (--host qmp:///DIR): the main job's scenarios as on libvirt, plus what only a
// QMP socket has (one client at a time, QEMU restarted from its command line).

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "github.com/autosnap/autosnap/internal/driver/qmp"
	"github.com/autosnap/autosnap/internal/testbed"
)

func qmpRun(t *testing.T, h *testbed.QMPHost, args ...string) result {
	t.Helper()
	return run(t, append([]string{"--host", h.URI()}, args...)...)
}

func qmpSnap(t *testing.T, h *testbed.QMPHost, vm, label string, keep int, extra ...string) result {
	t.Helper()
	return qmpRun(t, h, append([]string{"--vmid", vm, "--timestamp-format", fmtMS, "snap", "--label", label, "--keep", fmt.Sprint(keep)}, extra...)...)
}

func qmpStatus(t *testing.T, h *testbed.QMPHost, vm, label string) []statusRow {
	t.Helper()
	args := []string{"--vmid", vm, "--timestamp-format", fmtMS, "-o", "json", "status"}
	if label != "" {
		args = append(args, "--label", label)
	}
	r := qmpRun(t, h, args...)
	if r.code != 0 {
		t.Fatalf("status: exit %d", r.code)
	}
	var rows []statusRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, r.stdout)
	}
	return rows
}

// imageSnapshots lists the internal snapshots qemu-img sees in an image.
func imageSnapshots(t *testing.T, path string) []string {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "-U", "--output=json", path).Output()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v", path, err)
	}
	var info struct {
		Snapshots []struct {
			Name string `json:"name"`
		} `json:"snapshots"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range info.Snapshots {
		names = append(names, s.Name)
	}
	return names
}

// snapshotContent is the guest-visible content of an image's internal snapshot.
func snapshotContent(t *testing.T, path, name string) []byte {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "snap.raw")
	if out, err := exec.Command("qemu-img", "convert", "-U", "-l", "snapshot.name="+name, "-O", "raw", path, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert -l %s %s: %v %s", name, path, err, out)
	}
	b, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rowNames(rows []statusRow) []string {
	var n []string
	for _, r := range rows {
		n = append(n, r.Name)
	}
	return n
}

// TestQMPSnapRetentionKeepsData: snap --keep 2 rounds on running, paused and stopped
// guests; after every removal the guest holds every round's data, exactly the two
// newest snapshots exist in every image, and each holds exactly its rounds' data.
func TestQMPSnapRetentionKeepsData(t *testing.T) {
	for _, tc := range []struct {
		state string
		disks int
	}{{"running", 2}, {"paused", 1}, {"shutoff", 2}} {
		t.Run(fmt.Sprintf("%s/%ddisks", tc.state, tc.disks), func(t *testing.T) {
			h := testbed.NewQMPHost(t)
			q := h.Add(t, testbed.QEMUSpec{Disks: tc.disks, DiskMiB: 16})
			if tc.state == "running" {
				q.QMP(t, `{"execute":"cont"}`)
			}
			if tc.state == "shutoff" {
				// autosnap learns the guest's images while it runs, then it stops.
				qmpRun(t, h, "--vmid", q.Name, "vm", "list")
				q.Stop(t)
			}
			const n = 4096
			hasRounds := func(content []byte, upTo int, what string) {
				t.Helper()
				for r := 1; r <= 4; r++ {
					want := bytes.Repeat([]byte{0}, n)
					if r <= upTo {
						want = bytes.Repeat([]byte{byte(r)}, n)
					}
					if !bytes.Equal(content[r*n:(r+1)*n], want) {
						t.Fatalf("%s: round %d region is wrong (want rounds 1..%d written)", what, r, upTo)
					}
				}
			}
			taken := map[string]int{} // snapshot → last round it holds
			for round := 1; round <= 4; round++ {
				for i := 0; i < tc.disks; i++ {
					q.WriteDisk(t, i, int64(round*n), byte(round), n)
				}
				r := qmpSnap(t, h, q.Name, "ret", 2)
				if r.code != 0 {
					t.Fatalf("snap round %d: exit %d", round, r.code)
				}
				rows := qmpStatus(t, h, q.Name, "ret")
				if len(rows) != min(round, 2) {
					t.Fatalf("round %d: %d snapshots, want %d", round, len(rows), min(round, 2))
				}
				last := rows[len(rows)-1]
				taken[last.Name] = round
				wantCons := "crash"
				if tc.state == "shutoff" {
					wantCons = "offline"
				}
				if last.Label != "ret" || last.Description != "autosnap" || last.Location != "internal" || last.Consistency != wantCons || last.VMName != q.Name {
					t.Errorf("status row %+v", last)
				}
				for i := 0; i < tc.disks; i++ {
					img := q.Disks[i].Path
					if got := imageSnapshots(t, img); !slices.Equal(got, rowNames(rows)) {
						t.Fatalf("round %d: disk %d holds snapshots %v, status lists %v", round, i, got, rowNames(rows))
					}
					hasRounds(testbed.ReadImage(t, img, 0, 5*n), round, fmt.Sprintf("round %d: disk %d's current data", round, i))
					for _, row := range rows {
						hasRounds(snapshotContent(t, img, row.Name), taken[row.Name], fmt.Sprintf("round %d: disk %d, snapshot %s", round, i, row.Name))
					}
				}
			}
			if st := q.Running(); st != (tc.state != "shutoff") {
				t.Errorf("QEMU running = %v after the runs; the guest was %s", st, tc.state)
			}
			if tc.state != "shutoff" {
				if got := q.Status(t); (tc.state == "running") != (got == "running") {
					t.Errorf("guest %s after the runs, was %s", got, tc.state)
				}
			}
			qmpRun(t, h, "--vmid", q.Name, "--timestamp-format", fmtMS, "clean", "--label", "ret", "--keep", "0")
			for i := 0; i < tc.disks; i++ {
				if got := imageSnapshots(t, q.Disks[i].Path); len(got) != 0 {
					t.Errorf("after clean --keep 0 disk %d still holds %v", i, got)
				}
				hasRounds(testbed.ReadImage(t, q.Disks[i].Path, 0, 5*n), 4, "after clean")
			}
		})
	}
}

// TestQMPHooksDryRunAndExitCodes: hooks see the same phases as on libvirt, --dry-run
// changes nothing, and failures map to the documented exit codes.
func TestQMPHooksDryRunAndExitCodes(t *testing.T) {
	h := testbed.NewQMPHost(t)
	q := h.Add(t, testbed.QEMUSpec{Disks: 2, DiskMiB: 8})
	script, log := hookScript(t, t.TempDir(), "")
	if r := qmpSnap(t, h, q.Name, "hk", 1); r.code != 0 {
		t.Fatal("first snap failed")
	}
	r := qmpSnap(t, h, q.Name, "hk", 1, "--script", script)
	if r.code != 0 {
		t.Fatal("snap with hook failed")
	}
	var phases []string
	for _, c := range parseHookLog(t, log) {
		phases = append(phases, c["CV4PVE_AUTOSNAP_PHASE"])
		if p := c["CV4PVE_AUTOSNAP_PHASE"]; p == "snap-create-pre" && (c["CV4PVE_AUTOSNAP_VMNAME"] != q.Name || c["AUTOSNAP_NODE"] != h.Dir) {
			t.Errorf("snap-create-pre env: %v", c)
		}
	}
	want := "snap-job-start,snap-create-pre,snap-remove-pre,snap-remove-post,snap-create-post,snap-job-end"
	if got := strings.Join(phases, ","); got != want {
		t.Errorf("phases %s, want %s", got, want)
	}

	before := qmpStatus(t, h, q.Name, "hk")
	os.Remove(log)
	r = qmpRun(t, h, "--dry-run", "--vmid", q.Name, "--timestamp-format", fmtMS, "snap", "--label", "hk", "--keep", "1", "--script", script)
	if r.code != 0 || !strings.Contains(r.stdout, "Remove snapshot: "+before[0].Name) {
		t.Errorf("dry run: exit %d, should show removing %s", r.code, before[0].Name)
	}
	r = qmpRun(t, h, "--dry-run", "--vmid", q.Name, "--timestamp-format", fmtMS, "clean", "--label", "hk", "--keep", "0")
	if r.code != 0 || strings.Count(r.stdout, "Remove snapshot:") != 1 {
		t.Errorf("dry-run clean: exit %d", r.code)
	}
	if _, err := os.Stat(log); !os.IsNotExist(err) {
		t.Errorf("dry run ran the hook")
	}
	if got := imageSnapshots(t, q.Disks[1].Path); !slices.Equal(got, rowNames(before)) {
		t.Errorf("dry run changed the images' snapshots: %v, want %v", got, rowNames(before))
	}

	cases := []struct {
		args []string
		want int
	}{
		{[]string{"--host", "qmp:///nonexistent-autosnap-dir", "vm", "list"}, ExitConnect},
		{[]string{"--host", "qmp://somehost/run/qemu", "vm", "list"}, ExitConnect},
		{[]string{"--host", h.URI(), "--vmid", "no-such-vm-" + q.Name, "snap", "--label", "x", "--keep", "1"}, ExitFailure},
		{[]string{"--host", h.URI() + ",qemu:///system", "vm", "list"}, ExitUsage},
	}
	for _, tc := range cases {
		if r := run(t, tc.args...); r.code != tc.want {
			t.Errorf("%v: exit %d, want %d\n%s", tc.args, r.code, tc.want, r.stderr)
		}
	}
}

// TestQMPBusySocket: while another client holds the QMP socket, a run times out on
// that guest, says why, fails only that guest, and takes no snapshot.
func TestQMPBusySocket(t *testing.T) {
	h := testbed.NewQMPHost(t)
	q := h.Add(t, testbed.QEMUSpec{DiskMiB: 8})
	other := h.Add(t, testbed.QEMUSpec{DiskMiB: 8})
	qmpRun(t, h, "vm", "list") // autosnap has seen both
	holder, err := net.Dial("unix", q.QMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 512)
	holder.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := holder.Read(buf); err != nil { // the greeting: this client now holds the slot
		t.Fatal(err)
	}
	start := time.Now()
	r := qmpRun(t, h, "--timeout", "3", "--vmid", q.Name+","+other.Name, "--timestamp-format", fmtMS, "snap", "--label", "busy", "--keep", "1")
	took := time.Since(start)
	holder.Close()
	if r.code != ExitFailure {
		t.Errorf("exit %d, want %d (one guest failed)", r.code, ExitFailure)
	}
	out := r.stdout + r.stderr
	if !strings.Contains(out, "held by another client") || !strings.Contains(out, filepath.Join(h.Dir, q.Name+".qmp")) {
		t.Errorf("the run does not say the socket is held by another client")
	}
	if took > 30*time.Second {
		t.Errorf("the run took %s with --timeout 3", took)
	}
	if got := imageSnapshots(t, q.Disks[0].Path); len(got) != 0 {
		t.Errorf("busy guest got snapshots %v", got)
	}
	if got := imageSnapshots(t, other.Disks[0].Path); len(got) != 1 {
		t.Errorf("the other guest has snapshots %v, want one", got)
	}
	// Free again: the next run works.
	if r := qmpSnap(t, h, q.Name, "busy", 1); r.code != 0 {
		t.Errorf("snap after the other client left: exit %d", r.code)
	}
}

// TestQMPSnapshotsSurviveRestart: snapshots are inside the images, so QEMU started
// again with its command line lists them and reverts to them; a raw disk is refused
// with the reason.
func TestQMPSnapshotsSurviveRestart(t *testing.T) {
	h := testbed.NewQMPHost(t)
	q := h.Add(t, testbed.QEMUSpec{Disks: 2, DiskMiB: 16})
	q.QMP(t, `{"execute":"cont"}`)
	const n = 8192
	for round := 1; round <= 2; round++ {
		q.WriteDisk(t, 0, int64(round*n), byte(round), n)
		q.WriteDisk(t, 1, int64(round*n), byte(round), n)
		if r := qmpSnap(t, h, q.Name, "rs", 5); r.code != 0 {
			t.Fatalf("snap %d failed", round)
		}
	}
	q.WriteDisk(t, 0, 3*n, 3, n)
	before := qmpStatus(t, h, q.Name, "rs")
	argv := q.Argv(t)
	q.Stop(t)
	q.Restart(t, argv)
	after := qmpStatus(t, h, q.Name, "rs")
	if !slices.Equal(rowNames(after), rowNames(before)) || len(after) != 2 {
		t.Fatalf("after restarting QEMU: %v, before %v", rowNames(after), rowNames(before))
	}
	if after[1].Parent != after[0].Name {
		t.Errorf("parent lost across the restart: %+v", after[1])
	}
	r := qmpRun(t, h, "snapshot", "revert", q.Name, before[0].Name)
	if r.code == 0 {
		t.Errorf("reverting a running guest to a disk-only snapshot without --force succeeded")
	}
	mustRun(t, "--host", h.URI(), "snapshot", "revert", q.Name, before[0].Name, "--force", "--running")
	if !q.Running() || q.Status(t) != "running" {
		t.Fatalf("guest not running after revert --running")
	}
	for i := 0; i < 2; i++ {
		got := testbed.ReadImage(t, q.Disks[i].Path, 0, 4*n)
		want := make([]byte, 4*n)
		copy(want[n:], bytes.Repeat([]byte{1}, n))
		if !bytes.Equal(got, want) {
			t.Errorf("disk %d after reverting to %s: not exactly round 1's data", i, before[0].Name)
		}
	}

	// A raw disk plugged in: every later snapshot is refused, naming the disk.
	raw := filepath.Join(t.TempDir(), "raw.img")
	if err := os.WriteFile(raw, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{
		fmt.Sprintf(`{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"rawdisk","file":{"driver":"file","filename":%q}}}`, raw),
		`{"execute":"device_add","arguments":{"driver":"virtio-blk-pci","drive":"rawdisk","id":"rawdev"}}`,
	} {
		if out := q.QMP(t, c); !strings.Contains(out, `"return"`) {
			t.Fatalf("%s: %s", c, out)
		}
	}
	r = qmpSnap(t, h, q.Name, "rs", 5)
	if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "cannot hold internal snapshots") || !strings.Contains(r.stdout+r.stderr, "rawdev") {
		t.Errorf("snap of a guest with a raw disk: exit %d, want a failure naming the disk and the reason", r.code)
	}
	if got := imageSnapshots(t, q.Disks[0].Path); len(got) != 2 {
		t.Errorf("a refused snapshot left snapshots %v", got)
	}
}

// TestQMPQuiesce: a quiesced snapshot of the real guest (writing continuously) needs no
// journal recovery; a run killed while the guest is frozen leaves it to the watchdog,
// which thaws it within its bound.
func TestQMPQuiesce(t *testing.T) {
	bin := buildAutosnap(t)
	h := testbed.NewQMPHost(t)
	q := h.Add(t, testbed.QEMUSpec{Guest: true, Writer: true, DiskMiB: 32})
	time.Sleep(time.Second) // let the writer run
	for i := 0; i < 2; i++ {
		r := qmpSnap(t, h, q.Name, "cons", 5, "--quiesce", "on")
		if r.code != 0 {
			t.Fatalf("snap --quiesce on: exit %d", r.code)
		}
		rows := qmpStatus(t, h, q.Name, "cons")
		last := rows[len(rows)-1]
		if last.Consistency != "quiesced" {
			t.Errorf("consistency %q, want quiesced", last.Consistency)
		}
		img := filepath.Join(t.TempDir(), "snap.qcow2")
		if out, err := exec.Command("qemu-img", "convert", "-U", "-l", "snapshot.name="+last.Name, "-O", "qcow2", q.Disks[0].Path, img).CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		raw := filepath.Join(t.TempDir(), "snap.raw")
		if out, err := exec.Command("qemu-img", "convert", "-O", "raw", img, raw).CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		if out, err := exec.Command("dumpe2fs", "-h", raw).CombinedOutput(); err != nil || strings.Contains(string(out), "needs_recovery") {
			t.Errorf("quiesced snapshot %s needs journal recovery (or dumpe2fs failed: %v)", last.Name, err)
		}
		if err := testbed.FsckImage(t, img); err != nil {
			t.Errorf("quiesced snapshot %s: %v", last.Name, err)
		}
	}

	frozenNow := func() bool { return strings.Contains(q.Agent(t, `{"execute":"guest-fsfreeze-status"}`), "frozen") }
	cmd := exec.Command(bin, "--host", h.URI(), "--vmid", q.Name, "--timestamp-format", fmtMS, "snap", "--label", "kill", "--keep", "3")
	point := filepath.Join(t.TempDir(), "crash-point")
	var out bytes.Buffer
	cmd.Env = append(os.Environ(), "AUTOSNAP_CRASH_AT=freeze.frozen", "AUTOSNAP_CRASH_MODE=pause", "AUTOSNAP_CRASH_FILE="+point)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Remove(point)
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	for end := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(point); err == nil {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the run never reached freeze.frozen:\n%s", out.String())
		}
	}
	if !frozenNow() {
		t.Fatalf("guest not frozen at freeze.frozen:\n%s", out.String())
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	start := time.Now()
	for frozenNow() {
		if time.Since(start) > 12*time.Second {
			q.Agent(t, `{"execute":"guest-fsfreeze-thaw"}`)
			t.Fatalf("guest still frozen %s after the run was killed:\n%s", time.Since(start), out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("thawed %s after SIGKILL", time.Since(start).Round(10*time.Millisecond))
	// The killed run held the QMP socket only while preparing; the next run works.
	if r := qmpSnap(t, h, q.Name, "kill", 3); r.code != 0 {
		t.Errorf("snap after the killed run: exit %d", r.code)
	}
}

// TestQMPRevertInterruptedIsFinished: a revert killed after reverting the first of two
// disks (QEMU already quit) is finished by the next run, so no disk keeps a state
// its sibling does not have.
func TestQMPRevertInterruptedIsFinished(t *testing.T) {
	bin := buildAutosnap(t)
	for _, point := range []string{"qmp.revert-stopped", "qmp.revert-disk-done"} {
		t.Run(point, func(t *testing.T) {
			h := testbed.NewQMPHost(t)
			q := h.Add(t, testbed.QEMUSpec{Disks: 2, DiskMiB: 16})
			const n = 8192
			q.WriteDisk(t, 0, n, 1, n)
			q.WriteDisk(t, 1, n, 1, n)
			if r := qmpSnap(t, h, q.Name, "rv", 3); r.code != 0 {
				t.Fatal("snap failed")
			}
			name := qmpStatus(t, h, q.Name, "rv")[0].Name
			q.WriteDisk(t, 0, n, 2, n)
			q.WriteDisk(t, 1, n, 2, n)
			cmd := exec.Command(bin, "--host", h.URI(), "snapshot", "revert", q.Name, name, "--force")
			cmd.Env = append(os.Environ(), "AUTOSNAP_CRASH_AT="+point)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the revert was not killed at %s:\n%s", point, out)
			}
			if q.Running() {
				t.Fatalf("QEMU still runs after the killed revert")
			}
			// Any run that opens the guest finishes the revert.
			mustRun(t, "--host", h.URI(), "snapshot", "list", q.Name)
			for i := 0; i < 2; i++ {
				if got := testbed.ReadImage(t, q.Disks[i].Path, n, n); !bytes.Equal(got, bytes.Repeat([]byte{1}, n)) {
					t.Errorf("disk %d after the interrupted revert and the next run: not the snapshot's data", i)
				}
			}
		})
	}
}

// TestQMPKilledQEMU: QEMU killed hard leaves its socket behind with nobody listening;
// the guest is listed as shut off, snapshotted offline, and started again by a revert
// with --running from the command line autosnap recorded.
func TestQMPKilledQEMU(t *testing.T) {
	h := testbed.NewQMPHost(t)
	q := h.Add(t, testbed.QEMUSpec{DiskMiB: 16})
	q.QMP(t, `{"execute":"cont"}`)
	const n = 8192
	q.WriteDisk(t, 0, n, 1, n)
	if r := qmpSnap(t, h, q.Name, "kq", 3); r.code != 0 {
		t.Fatal("snap failed")
	}
	q.KillHard(t)
	if _, err := os.Stat(q.QMPSocket); err != nil {
		t.Fatalf("the killed QEMU's socket is gone (%v); this test needs it left behind", err)
	}
	rows, r := vmListHost(t, h, q.Name)
	if r.code != 0 || len(rows) != 1 || rows[0].State != "shutoff" {
		t.Fatalf("vm list after kill -9: exit %d, %+v", r.code, rows)
	}
	q.WriteDisk(t, 0, n, 2, n) // offline, into the image
	if r := qmpSnap(t, h, q.Name, "kq", 3); r.code != 0 {
		t.Fatal("offline snap failed")
	}
	st := qmpStatus(t, h, q.Name, "kq")
	if len(st) != 2 || st[1].Consistency != "offline" {
		t.Fatalf("status %+v", st)
	}
	mustRun(t, "--host", h.URI(), "snapshot", "revert", q.Name, st[0].Name, "--running")
	if !q.Running() || q.Status(t) != "running" {
		t.Fatalf("QEMU not running after revert --running")
	}
	if got := testbed.ReadImage(t, q.Disks[0].Path, n, n); !bytes.Equal(got, bytes.Repeat([]byte{1}, n)) {
		t.Errorf("after reverting to %s: not its data", st[0].Name)
	}
}

func vmListHost(t *testing.T, h *testbed.QMPHost, sel string) ([]vmRow, result) {
	t.Helper()
	r := qmpRun(t, h, "--vmid", sel, "-o", "json", "vm", "list")
	var rows []vmRow
	if r.code == 0 {
		if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
			t.Fatalf("vm list JSON: %v\n%s", err, r.stdout)
		}
	}
	return rows, r
}
