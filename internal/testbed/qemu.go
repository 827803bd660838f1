package testbed

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// QEMUSpec describes a standalone QEMU started by StartQEMU.
type QEMUSpec struct {
	// Disks is the number of virtio disks, vda, vdb, vdc: 1 to 3; 0 means 1.
	Disks int
	// DiskMiB is the virtual size of each disk; 0 means 64.
	DiskMiB int
	// Guest boots the test guest (vda is then an ext4 data disk) and StartQEMU returns
	// once its agent answers. Without Guest QEMU starts with -S: CPUs stopped, no code
	// runs, but QMP and the block layer work.
	Guest bool
	// Writer starts the guest's writer loop (requires Guest); see DomainSpec.Writer.
	Writer bool
	// MemoryMiB is the guest memory; 0 means 256 with Guest, else 64.
	MemoryMiB int
}

// QEMU is a daemonized qemu-system-x86_64 (TCG) outside libvirt.
//
// Disk i is a qcow2 node named Disks[i].Node ("disk-vda", …) on a file node
// ("file-vda", …) attached to a virtio-blk-pci device with id "virtio-disk<i>", so
// "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend …" works as under libvirt.
type QEMU struct {
	Name        string // "ast-<pid>-<random>", also QEMU's -name
	Dir         string // private directory (0700), removed by the cleanup
	QMPSocket   string // QMP server socket
	AgentSocket string // host end of the org.qemu.guest_agent.0 port
	ConsoleLog  string // serial console
	Disks       []Disk
	Pid         int
	Spec        QEMUSpec // defaults filled in
}

// StartQEMU starts a standalone QEMU as described by spec. The cleanup kills the
// process (SIGTERM, then SIGKILL) and removes Dir. If a guest's agent does not answer
// within BootTimeout the test fails with the tail of the console log.
func StartQEMU(t testing.TB, spec QEMUSpec) *QEMU {
	t.Helper()
	ds := DomainSpec{Disks: spec.Disks, DiskMiB: spec.DiskMiB, Guest: spec.Guest, Writer: spec.Writer,
		MemoryMiB: spec.MemoryMiB}.normalize(t)
	spec = QEMUSpec{Disks: ds.Disks, DiskMiB: ds.DiskMiB, Guest: ds.Guest, Writer: ds.Writer, MemoryMiB: ds.MemoryMiB}
	var guest GuestFiles
	if spec.Guest {
		guest = GuestImage(t)
	}
	sweepDirsOnce.Do(func() { sweepDirs(t) })
	name := newName(t)
	q := &QEMU{Name: name, Spec: spec}
	q.Dir = makeFixtureDir(t, name)
	q.QMPSocket = filepath.Join(q.Dir, "qmp.sock")
	q.AgentSocket = filepath.Join(q.Dir, "qga.sock")
	q.ConsoleLog = filepath.Join(q.Dir, "console.log")
	t.Cleanup(func() {
		if err := killQEMU(q.Dir, time.Now().Add(15*time.Second)); err != nil {
			t.Errorf("testbed: cleanup: %v", err)
		}
		if err := os.RemoveAll(q.Dir); err != nil {
			t.Errorf("testbed: cleanup: %v", err)
		}
	})

	args := []string{
		"-name", name,
		"-accel", "tcg", "-machine", "pc", "-smp", "1", "-m", strconv.Itoa(spec.MemoryMiB),
		"-nodefaults", "-no-user-config", "-display", "none",
		"-qmp", "unix:" + q.QMPSocket + ",server=on,wait=off",
		"-chardev", "socket,id=qga0,path=" + q.AgentSocket + ",server=on,wait=off",
		"-device", "virtio-serial-pci,id=virtio-serial0",
		"-device", "virtserialport,chardev=qga0,name=" + AgentChannel,
		"-serial", "file:" + q.ConsoleLog,
		"-daemonize", "-pidfile", filepath.Join(q.Dir, "qemu.pid"),
	}
	for i := 0; i < spec.Disks; i++ {
		target := "vd" + string(rune('a'+i))
		disk := Disk{Target: target, Path: filepath.Join(q.Dir, target+".qcow2"), Node: "disk-" + target}
		if spec.Guest && i == 0 {
			NewDataDisk(t, disk.Path, spec.DiskMiB)
		} else {
			newBlankDisk(t, disk.Path, spec.DiskMiB)
		}
		q.Disks = append(q.Disks, disk)
		args = append(args,
			"-blockdev", "driver=file,filename="+disk.Path+",node-name=file-"+target,
			"-blockdev", "driver=qcow2,file=file-"+target+",node-name="+disk.Node,
			"-device", fmt.Sprintf("virtio-blk-pci,drive=%s,id=virtio-disk%d", disk.Node, i))
	}
	if spec.Guest {
		args = append(args, "-kernel", guest.Kernel, "-initrd", guest.Initrd, "-append", GuestCmdline(spec.Writer))
	} else {
		args = append(args, "-S")
	}
	// -daemonize returns once QEMU is initialised and its sockets listen.
	mustRun(t, 60*time.Second, "qemu-system-x86_64", args...)
	pid, err := readPid(filepath.Join(q.Dir, "qemu.pid"))
	if err != nil {
		t.Fatalf("testbed: %s: %v", name, err)
	}
	q.Pid = pid

	if spec.Guest {
		start := time.Now()
		deadline := start.Add(BootTimeout)
		for {
			_, err = agentCommand(q.AgentSocket, `{"execute":"guest-ping"}`, 3*time.Second)
			if err == nil {
				t.Logf("testbed: %s: agent answered %v after start", name, time.Since(start).Round(100*time.Millisecond))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("testbed: %s: guest agent did not answer within %v: %v\nconsole log tail:\n%s",
					name, BootTimeout, err, fileTail(q.ConsoleLog, 40))
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	return q
}

// QMP runs one QMP command (JSON) and returns the raw reply line, which holds either
// "return" or "error". Asynchronous events are skipped. Transport errors fail the test.
func (q *QEMU) QMP(t testing.TB, cmdJSON string) string {
	t.Helper()
	conn, err := net.DialTimeout("unix", q.QMPSocket, 10*time.Second)
	if err != nil {
		t.Fatalf("testbed: %s: QMP: %v", q.Name, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReader(conn)
	if _, err := r.ReadBytes('\n'); err != nil { // greeting
		t.Fatalf("testbed: %s: QMP greeting: %v", q.Name, err)
	}
	for _, cmd := range []string{`{"execute":"qmp_capabilities"}`, cmdJSON} {
		if _, err := fmt.Fprintf(conn, "%s\n", cmd); err != nil {
			t.Fatalf("testbed: %s: QMP %s: %v", q.Name, cmd, err)
		}
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				t.Fatalf("testbed: %s: QMP %s: %v", q.Name, cmd, err)
			}
			var msg map[string]json.RawMessage
			if json.Unmarshal(line, &msg) != nil {
				t.Fatalf("testbed: %s: QMP %s: bad reply %q", q.Name, cmd, line)
			}
			if _, ok := msg["event"]; ok {
				continue
			}
			if cmd == cmdJSON {
				return strings.TrimSpace(string(line))
			}
			break
		}
	}
	return ""
}

// Agent sends a raw guest agent command (JSON) over AgentSocket and returns the raw
// reply line. A guest-sync handshake first discards replies left over from earlier
// connections. Errors and a missing reply within 30 s fail the test.
func (q *QEMU) Agent(t testing.TB, cmdJSON string) string {
	t.Helper()
	out, err := agentCommand(q.AgentSocket, cmdJSON, 30*time.Second)
	if err != nil {
		t.Fatalf("testbed: %s: agent command %s: %v", q.Name, cmdJSON, err)
	}
	return out
}

// ConsoleTail returns the last n lines of the serial console log.
func (q *QEMU) ConsoleTail(n int) string { return fileTail(q.ConsoleLog, n) }

func agentCommand(socket, cmdJSON string, timeout time.Duration) (string, error) {
	conn, err := net.DialTimeout("unix", socket, timeout)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	// Bytes sent before the guest opened its port, or replies to a client that gave
	// up, can still arrive; the sync id tells our reply apart.
	id := time.Now().UnixNano() & (1<<52 - 1)
	if _, err := fmt.Fprintf(conn, "{\"execute\":\"guest-sync\",\"arguments\":{\"id\":%d}}\n", id); err != nil {
		return "", err
	}
	r := bufio.NewReader(conn)
	want := []byte(fmt.Sprintf(`{"return": %d}`, id))
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return "", fmt.Errorf("waiting for guest-sync: %w", err)
		}
		if bytes.Equal(bytes.TrimSpace(line), want) {
			break
		}
	}
	if _, err := fmt.Fprintf(conn, "%s\n", cmdJSON); err != nil {
		return "", err
	}
	line, err := r.ReadBytes('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(line)), nil
}

func readPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("bad pid file %s: %q", path, b)
	}
	return pid, nil
}

// killQEMU stops the QEMU whose pid file is in dir, if it still runs and its command
// line names dir (so a recycled pid is left alone), and waits until it is gone.
func killQEMU(dir string, deadline time.Time) error {
	pid, err := readPid(filepath.Join(dir, "qemu.pid"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	ours := func() bool {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		return err == nil && bytes.Contains(cmdline, []byte(dir+"/"))
	}
	if !ours() {
		return nil
	}
	syscall.Kill(pid, syscall.SIGTERM)
	killAt := time.Now().Add(5 * time.Second)
	for ours() {
		now := time.Now()
		if now.After(deadline) {
			return fmt.Errorf("QEMU pid %d for %s did not exit", pid, dir)
		}
		if now.After(killAt) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}
