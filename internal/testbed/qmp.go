package testbed

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// QMPHost is a directory laid out as autosnap's --host qmp:///DIR expects: NAME.qmp and
// NAME.qga for every guest added with Add. The cleanup removes it.
type QMPHost struct {
	Dir string
}

// NewQMPHost makes an empty host directory (0700) below WorkDir.
func NewQMPHost(t testing.TB) *QMPHost {
	t.Helper()
	sweepDirsOnce.Do(func() { sweepDirs(t) })
	dir := makeFixtureDir(t, newName(t))
	t.Cleanup(func() { os.RemoveAll(dir) })
	return &QMPHost{Dir: dir}
}

// URI is the --host value of the directory.
func (h *QMPHost) URI() string { return "qmp://" + h.Dir }

// Add starts a standalone QEMU (StartQEMU) and makes it guest q.Name of the host:
// NAME.qmp and NAME.qga are symbolic links to its sockets, which keep working when
// QEMU is started again with the same command line.
func (h *QMPHost) Add(t testing.TB, spec QEMUSpec) *QEMU {
	t.Helper()
	q := StartQEMU(t, spec)
	for ext, target := range map[string]string{".qmp": q.QMPSocket, ".qga": q.AgentSocket} {
		if err := os.Symlink(target, filepath.Join(h.Dir, q.Name+ext)); err != nil {
			t.Fatalf("testbed: %v", err)
		}
	}
	return q
}

// Running reports whether q's QEMU process runs (it may have been quit and started
// again by the code under test; the pid file tells the current one).
func (q *QEMU) Running() bool {
	pid, err := readPid(filepath.Join(q.Dir, "qemu.pid"))
	if err != nil {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte(q.Dir+"/")) {
		return false
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !bytes.Contains(st, []byte(") Z "))
}

// Status is QEMU's run state (query-status), e.g. "running", "paused", "prelaunch".
func (q *QEMU) Status(t testing.TB) string {
	t.Helper()
	var rep struct {
		Return struct {
			Status string `json:"status"`
		} `json:"return"`
	}
	line := q.QMP(t, `{"execute":"query-status"}`)
	if err := json.Unmarshal([]byte(line), &rep); err != nil || rep.Return.Status == "" {
		t.Fatalf("testbed: %s: query-status: %s", q.Name, line)
	}
	return rep.Return.Status
}

// Stop quits QEMU through QMP and waits until the process is gone (its sockets
// disappear with it).
func (q *QEMU) Stop(t testing.TB) {
	t.Helper()
	q.QMP(t, `{"execute":"quit"}`)
	deadline := time.Now().Add(30 * time.Second)
	for q.Running() {
		if time.Now().After(deadline) {
			t.Fatalf("testbed: %s: QEMU did not exit after quit", q.Name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Restart starts QEMU again with exactly the command line of its current (or last)
// process, as an init script would, and waits until QMP answers.
func (q *QEMU) Restart(t testing.TB, argv []string) {
	t.Helper()
	if q.Running() {
		t.Fatalf("testbed: %s: Restart while QEMU runs", q.Name)
	}
	mustRun(t, 60*time.Second, argv[0], argv[1:]...)
	deadline := time.Now().Add(30 * time.Second)
	for !q.Running() {
		if time.Now().After(deadline) {
			t.Fatalf("testbed: %s: QEMU did not start again", q.Name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Argv is the command line of q's running QEMU.
func (q *QEMU) Argv(t testing.TB) []string {
	t.Helper()
	pid, err := readPid(filepath.Join(q.Dir, "qemu.pid"))
	if err != nil {
		t.Fatalf("testbed: %s: %v", q.Name, err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatalf("testbed: %s: %v", q.Name, err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
}

// WriteDisk writes length bytes of pattern at offset of disk i through the running
// QEMU (qemu-io below the guest OS) and flushes, like Domain.WriteDisk; without a
// running QEMU it writes into the image directly.
func (q *QEMU) WriteDisk(t testing.TB, i int, offset int64, pattern byte, length int) {
	t.Helper()
	if !q.Running() {
		out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P %d %d %d", pattern, offset, length), q.Disks[i].Path).CombinedOutput()
		if err != nil {
			t.Fatalf("testbed: qemu-io on %s: %v: %s", q.Disks[i].Path, err, out)
		}
		return
	}
	dev := fmt.Sprintf("/machine/peripheral/virtio-disk%d/virtio-backend", i)
	for _, io := range []string{fmt.Sprintf("write -P 0x%02x %d %d", pattern, offset, length), "flush"} {
		cmd, _ := json.Marshal(map[string]any{"execute": "human-monitor-command",
			"arguments": map[string]any{"command-line": fmt.Sprintf("qemu-io -d %s %q", dev, io)}})
		line := q.QMP(t, string(cmd))
		var rep struct {
			Return *string `json:"return"`
		}
		if json.Unmarshal([]byte(line), &rep) != nil || rep.Return == nil || strings.TrimSpace(*rep.Return) != "" {
			t.Fatalf("testbed: %s: qemu-io %q on disk %d: %s", q.Name, io, i, line)
		}
	}
}

// KillHard sends SIGKILL to QEMU (a crash) and waits until it is gone.
func (q *QEMU) KillHard(t testing.TB) {
	t.Helper()
	pid, err := readPid(filepath.Join(q.Dir, "qemu.pid"))
	if err != nil {
		t.Fatalf("testbed: %s: %v", q.Name, err)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	for q.Running() {
		time.Sleep(20 * time.Millisecond)
	}
}
