package qmp

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
)

func TestSnapDisksRefusesRawWithReason(t *testing.T) {
	ds := []disk{
		{Name: "vda", Node: "disk-vda", File: "/i/a.qcow2", Format: "qcow2"},
		{Name: "cd0", Node: "cd", File: "/i/boot.iso", Format: "raw", ReadOnly: true},
		{Name: "vdb", Node: "disk-vdb", File: "/i/b.img", Format: "raw"},
	}
	_, err := snapDisks("web1", ds)
	if !errors.Is(err, driver.ErrUnsupported) || !strings.Contains(err.Error(), "vdb") || !strings.Contains(err.Error(), "cannot hold internal snapshots") {
		t.Errorf("a writable raw disk: %v", err)
	}
	got, err := snapDisks("web1", ds[:2])
	if err != nil || len(got) != 1 || got[0].Name != "vda" {
		t.Errorf("qcow2 + read-only ISO: %v, %v; want vda only", got, err)
	}
	if _, err := snapDisks("web1", ds[1:2]); !errors.Is(err, driver.ErrUnsupported) {
		t.Errorf("only a read-only disk: %v", err)
	}
}

func TestNamesAndStates(t *testing.T) {
	for in, want := range map[string]string{"/run/q/web1.qmp": "/run/q/web1.autosnap.json", "/run/one.sock": "/run/one.sock.autosnap.json"} {
		if got := metaPath(in); got != want {
			t.Errorf("metaPath(%s) = %s, want %s", in, got, want)
		}
	}
	if got := qdevName("/machine/peripheral/virtio-disk0/virtio-backend"); got != "virtio-disk0" {
		t.Errorf("qdevName: %q", got)
	}
	if got := qdevName("/machine/unattached/device[3]"); got != "" {
		t.Errorf("qdevName of an anonymous device: %q", got)
	}
	for in, want := range map[string]driver.State{"running": driver.StateRunning, "prelaunch": driver.StatePaused, "paused": driver.StatePaused,
		"guest-panicked": driver.StateCrashed, "suspended": driver.StateSuspended, "shutdown": driver.StateShutdown} {
		if got := mapStatus(in); got != want {
			t.Errorf("mapStatus(%s) = %s, want %s", in, got, want)
		}
	}
}

// TestListMergesDisksAndOrders: snapshots are merged by name over disks, ordered by the
// sidecar's sequence over equal dates, and one missing on a disk is incomplete.
func TestListMergesDisksAndOrders(t *testing.T) {
	at := func(s int64) snapInfo { return snapInfo{DateSec: s} }
	named := func(n string, s snapInfo) snapInfo { s.Name = n; return s }
	v := &view{
		e:     entry{name: "g"},
		disks: []disk{{Name: "vda"}, {Name: "vdb"}},
		snaps: [][]snapInfo{
			{named("b", at(100)), named("a", at(100)), named("user", at(50)), named("half", at(200))},
			{named("b", at(100)), named("a", at(100)), named("user", at(50))},
		},
		m: &meta{Current: "a", Snapshots: map[string]*snapMeta{
			"b":    {Description: "autosnap", Seq: 1},
			"a":    {Description: "autosnap", Parent: "b", Seq: 2},
			"half": {Description: "autosnap", Parent: "gone", Seq: 3},
		}},
	}
	list := v.list()
	var names []string
	for _, s := range list {
		names = append(names, s.Name)
	}
	if !slices.Equal(names, []string{"user", "b", "a", "half"}) {
		t.Fatalf("order %v", names)
	}
	if list[2].Parent != "b" || !list[2].Current || list[1].Current {
		t.Errorf("parent/current: %+v", list[2])
	}
	if list[3].Incomplete == "" || list[3].Parent != "" {
		t.Errorf("snapshot on one of two disks: %+v", list[3])
	}
	if list[0].Description != "" || list[0].Incomplete != "" {
		t.Errorf("foreign snapshot: %+v", list[0])
	}
}

func TestSidecarIsPrivateAndAtomic(t *testing.T) {
	p := filepath.Join(t.TempDir(), "g.autosnap.json")
	m, err := readMeta(p)
	if err != nil || len(m.Snapshots) != 0 {
		t.Fatalf("missing sidecar: %v, %v", m, err)
	}
	m.Snapshots["s"] = &snapMeta{Description: "autosnap", Created: time.Unix(5, 0)}
	if err := writeMeta(p, m); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("sidecar mode %v, %v; want 0600", fi.Mode(), err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(p), ".autosnap-meta-*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
	os.WriteFile(p, []byte("{broken"), 0o600)
	if _, err := readMeta(p); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("a damaged sidecar: %v", err)
	}
}

func TestOpenURIs(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "one.sock")
	os.WriteFile(sock, nil, 0o600)
	cases := []struct {
		host string
		ok   bool
	}{
		{"qmp://" + dir, true},
		{"qmp://" + sock, true},
		{"qmp://" + sock + "?agent=/x/a.qga", true},
		{"qmp://" + dir + "?agent=/x", false},
		{"qmp://host" + dir, false},
		{"qmp:///nonexistent-autosnap", false},
	}
	for _, c := range cases {
		d, err := Open(context.Background(), driver.Config{Host: c.host})
		if (err == nil) != c.ok {
			t.Errorf("Open(%s): %v", c.host, err)
		}
		if err == nil && d.Node() == "" {
			t.Errorf("Open(%s): no node", c.host)
		}
	}
	d, _ := Open(context.Background(), driver.Config{Host: "qmp://" + sock})
	es, _ := d.entries()
	if len(es) != 1 || es[0].name != "one" || es[0].agent != filepath.Join(dir, "one.qga") {
		t.Errorf("single socket entries: %+v", es)
	}
	d, _ = Open(context.Background(), driver.Config{Host: "qmp://" + sock, AgentSocket: "/run/vm/one.agent"})
	if es, _ := d.entries(); len(es) != 1 || es[0].agent != "/run/vm/one.agent" {
		t.Errorf("--agent-socket not used: %+v", es)
	}
	if _, err := Open(context.Background(), driver.Config{Host: "qmp://" + dir, AgentSocket: "/x"}); err == nil {
		t.Error("--agent-socket with a directory accepted")
	}
	if _, err := Open(context.Background(), driver.Config{Host: "qmp:///nonexistent-autosnap"}); !errors.Is(err, driver.ErrConnect) {
		t.Errorf("missing directory: %v, want ErrConnect", err)
	}
}

// TestLockAcrossProcesses: a second driver (another autosnap process) neither waits
// for the greeting of a socket the first one holds when listing, nor works on the
// guest until the first one is done.
func TestLockAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	l, err := net.Listen("unix", filepath.Join(dir, "g.qmp"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close() // accepts (kernel backlog) but never greets, as a held QMP socket
	open := func() *Driver {
		d, err := Open(context.Background(), driver.Config{Host: "qmp://" + dir, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	d1, d2 := open(), open()
	e := d1.entry("g")
	unlock, err := d1.lock(context.Background(), e)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	gs, err := d2.Guests(context.Background())
	if err != nil || len(gs) != 1 || gs[0].State != driver.StateRunning {
		t.Fatalf("Guests while another process works on g: %+v, %v", gs, err)
	}
	if took := time.Since(start); took > probeWait/2 {
		t.Errorf("Guests waited %s for a socket another autosnap process holds", took)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if u, err := d2.lock(ctx, d2.entry("g")); err == nil {
		u()
		t.Errorf("a second process locked a guest the first one works on")
	} else if !strings.Contains(err.Error(), "another autosnap process") {
		t.Errorf("second lock: %v, want it to name another autosnap process", err)
	}
	unlock()
	u2, err := d2.lock(context.Background(), d2.entry("g"))
	if err != nil {
		t.Fatalf("lock after the first process let go: %v", err)
	}
	u2()
}
