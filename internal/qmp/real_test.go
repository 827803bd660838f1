package qmp_test

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/qmp"
	"github.com/autosnap/autosnap/internal/testbed"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

// TestRealQEMUJobsAndBusySocket runs the snapshot jobs against a real QEMU 7.2 and
// checks that a second client is told the socket is busy.
func TestRealQEMUJobsAndBusySocket(t *testing.T) {
	q := testbed.StartQEMU(t, testbed.QEMUSpec{Disks: 2, DiskMiB: 16})
	m, err := qmp.Dial(ctxT(t, 10*time.Second), q.QMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if !m.Version().AtLeast(7, 1) {
		t.Fatalf("QEMU %s", m.Version())
	}

	_, err = qmp.Dial(ctxT(t, 500*time.Millisecond), q.QMPSocket)
	if !errors.Is(err, qmp.ErrBusy) {
		t.Errorf("second client: %v, want ErrBusy", err)
	}

	devs := []string{q.Disks[0].Node, q.Disks[1].Node}
	if err := m.RunJob(ctxT(t, time.Minute), "snapshot-save", "s1", map[string]any{"job-id": "s1", "tag": "withram", "vmstate": devs[0], "devices": devs}); err != nil {
		t.Fatalf("snapshot-save: %v", err)
	}
	err = m.RunJob(ctxT(t, time.Minute), "snapshot-save", "s2", map[string]any{"job-id": "s2", "tag": "withram", "vmstate": devs[0], "devices": devs})
	var qe *qmp.Error
	if !errors.As(err, &qe) || !strings.Contains(qe.Desc, "withram") {
		t.Errorf("snapshot-save of an existing tag: %v, want the job's error naming it", err)
	}
	var jobs []qmp.JobInfo
	if err := m.Execute(ctxT(t, 10*time.Second), "query-jobs", nil, &jobs); err != nil || len(jobs) != 0 {
		t.Errorf("jobs left after RunJob: %+v, %v (concluded jobs must be dismissed)", jobs, err)
	}
	if err := m.RunJob(ctxT(t, time.Minute), "snapshot-load", "l1", map[string]any{"job-id": "l1", "tag": "withram", "vmstate": devs[0], "devices": devs}); err != nil {
		t.Fatalf("snapshot-load: %v", err)
	}
	if err := m.RunJob(ctxT(t, time.Minute), "snapshot-delete", "d1", map[string]any{"job-id": "d1", "tag": "withram", "devices": devs}); err != nil {
		t.Fatalf("snapshot-delete: %v", err)
	}
	m.Close()
	out, err := exec.Command("qemu-img", "snapshot", "-U", "-l", q.Disks[1].Path).CombinedOutput()
	if err != nil || strings.Contains(string(out), "withram") {
		t.Errorf("after snapshot-delete: %v: %s", err, out)
	}
	// The slot is free again once the first client hung up.
	m2, err := qmp.Dial(ctxT(t, 5*time.Second), q.QMPSocket)
	if err != nil {
		t.Fatalf("reconnect after Close: %v", err)
	}
	m2.Close()
}

// TestRealAgent freezes and thaws the tiny guest through its real qemu-guest-agent,
// after a client that gave up left an unread request in the channel.
func TestRealAgent(t *testing.T) {
	q := testbed.StartQEMU(t, testbed.QEMUSpec{Guest: true, DiskMiB: 32})
	// A client that sent a command and vanished: its reply is pending in the channel.
	c, err := net.Dial("unix", q.AgentSocket)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte(`{"execute":"guest-info"}` + "\n"))
	c.Close()

	a, err := qmp.DialAgent(ctxT(t, 20*time.Second), q.AgentSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.Ping(ctxT(t, 10*time.Second)); err != nil {
		t.Fatalf("guest-ping: %v", err)
	}
	n, err := a.Freeze(ctxT(t, 20*time.Second))
	if err != nil || n < 1 {
		t.Fatalf("freeze: %d, %v", n, err)
	}
	frozen, err := a.FreezeStatus(ctxT(t, 10*time.Second))
	if err != nil || !frozen {
		t.Errorf("status after freeze: %v, %v", frozen, err)
	}
	if n, err := a.Thaw(ctxT(t, 20*time.Second)); err != nil || n < 1 {
		t.Fatalf("thaw: %d, %v", n, err)
	}
	if frozen, err := a.FreezeStatus(ctxT(t, 10*time.Second)); err != nil || frozen {
		t.Errorf("status after thaw: %v, %v", frozen, err)
	}
}
