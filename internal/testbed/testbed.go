// Package testbed provides real fixtures for autosnap's integration tests: throwaway
// libvirt domains on qemu:///system, standalone QEMU processes, a tiny Linux guest with a
// real qemu-guest-agent, and helpers that read and write disk images.
//
// Nothing is mocked. A missing dependency (libvirtd not answering, qemu-img missing, the
// guest image failing to build) fails the test; it never skips it.
//
// Every fixture registers a t.Cleanup that removes it even when the test fails. Fixtures
// of test processes that died without cleaning up are recognised by their name,
// "ast-<pid>-<random>", and removed by the next test process that calls Libvirt or
// StartQEMU (see Bed.SweepStale).
//
// Fixtures run guests under TCG (libvirt domain type "qemu", QEMU -accel tcg) because
// nested KVM is not available everywhere the tests run.
package testbed

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	// CacheDir holds the built guest images, one directory per input hash.
	CacheDir = "/var/cache/autosnap-testbed"
	// WorkDir holds one private directory per fixture, named like the fixture.
	WorkDir = "/var/tmp/autosnap-testbed"
	// NamePrefix starts the name of every fixture: NamePrefix + "<pid>-<random>".
	NamePrefix = "ast-"
	// AgentChannel is the virtio-serial port name qemu-guest-agent listens on.
	AgentChannel = "org.qemu.guest_agent.0"
	// BootTimeout bounds how long a guest may take until its agent answers.
	BootTimeout = 60 * time.Second
)

// Disk is one disk of a fixture as it was created.
type Disk struct {
	// Target is the guest device name: vda, vdb, vdc.
	Target string
	// Path is the initial qcow2 image. Snapshots may later put overlays on top of it;
	// see Domain.Chain for the current chain.
	Path string
	// Node is the QEMU block node name of the qcow2 layer (StartQEMU only; libvirt
	// chooses its own node names).
	Node string
}

// newName returns a fresh fixture name owned by this process.
func newName(t testing.TB) string {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("testbed: random name: %v", err)
	}
	return fmt.Sprintf("%s%d-%s", NamePrefix, os.Getpid(), hex.EncodeToString(b[:]))
}

// ownerPid extracts the pid from a fixture name; ok is false for names testbed did not
// make.
func ownerPid(name string) (pid int, ok bool) {
	rest, found := strings.CutPrefix(name, NamePrefix)
	if !found {
		return 0, false
	}
	digits, _, found := strings.Cut(rest, "-")
	if !found {
		return 0, false
	}
	pid, err := strconv.Atoi(digits)
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

// pidAlive reports whether a process with that pid exists. A recycled pid keeps a
// stale fixture alive until that process is gone too, which is harmless.
func pidAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	if err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	// A killed test binary can linger as a zombie until its parent reaps it.
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
		return false
	}
	return true
}

// makeFixtureDir creates WorkDir/name with mode 0700.
func makeFixtureDir(t testing.TB, name string) string {
	t.Helper()
	if err := os.MkdirAll(WorkDir, 0o700); err != nil {
		t.Fatalf("testbed: %v", err)
	}
	dir := WorkDir + "/" + name
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatalf("testbed: %v", err)
	}
	return dir
}

// run executes a command with a timeout and returns its stdout; on failure the error
// carries the command line and its stderr.
func run(timeout time.Duration, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err,
			strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// mustRun is run that fails the test.
func mustRun(t testing.TB, timeout time.Duration, name string, args ...string) []byte {
	t.Helper()
	out, err := run(timeout, name, args...)
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	return out
}

// fileTail returns the last n lines of a file, or a note why it cannot.
func fileTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return "(empty)"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
