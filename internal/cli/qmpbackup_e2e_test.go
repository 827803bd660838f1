package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/qmp"
	"github.com/autosnap/autosnap/internal/testbed"
)

// qbRunner makes qmpbackup backups of a standalone QEMU the way qmpbackup (v0.67,
// QEMU ≥ 7.1) does, through the QMP client: per disk a target image
// <target>/<disk file>/<LEVEL>-<epoch>-<disk file>.partial and a fleece image beside
// the disk, a copy-before-write filter switched under the device (qom-set drive) and
// a snapshot-access node; one transaction adds (full) or copies and clears (inc) the
// persistent bitmap qmpbackup-<uuid> and starts every blockdev-backup; then the
// graph is restored, the fleece images removed and the .partial files renamed.
type qbRunner struct {
	t      *testing.T
	q      *testbed.QEMU
	target string
	uuid   string
	qdev   map[string]string // node → the device's QOM path
}

func newQBRunner(t *testing.T, q *testbed.QEMU, target string) *qbRunner {
	t.Helper()
	if err := os.MkdirAll(target, 0o700); err != nil {
		t.Fatal(err)
	}
	r := &qbRunner{t: t, q: q, target: target, uuid: "5f0c9a52-8f0e-4b8e-9d76-3c1f2a9b7e10", qdev: map[string]string{}}
	if err := os.WriteFile(filepath.Join(target, "uuid"), []byte(r.uuid), 0o600); err != nil {
		t.Fatal(err)
	}
	m := r.dial()
	defer m.Close()
	var blocks []struct {
		Qdev     string `json:"qdev"`
		Inserted struct {
			NodeName string `json:"node-name"`
		} `json:"inserted"`
	}
	if err := m.Execute(context.Background(), "query-block", nil, &blocks); err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks {
		r.qdev[b.Inserted.NodeName] = b.Qdev
	}
	for _, d := range q.Disks {
		if r.qdev[d.Node] == "" {
			t.Fatalf("query-block has no device for node %s: %+v", d.Node, blocks)
		}
		// qmpbackup saves the source's qemu-img info beside the disk directories.
		info, err := exec.Command("qemu-img", "info", "--output", "json", "--force-share", d.Path).Output()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(target, filepath.Base(d.Path)+".config"), info, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func (r *qbRunner) dial() *qmp.Monitor {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := qmp.Dial(ctx, r.q.QMPSocket)
	if err != nil {
		r.t.Fatalf("qmp dial: %v", err)
	}
	return m
}

func (r *qbRunner) exec(m *qmp.Monitor, cmd string, args any) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := m.Execute(ctx, cmd, args, nil); err != nil {
		r.t.Fatalf("%s %v: %v", cmd, args, err)
	}
}

// backup runs one qmpbackup run of level (full, inc, copy) stamped stamp. With
// keepPartial the run ends like one killed before its final rename: the images stay
// *.partial.
func (r *qbRunner) backup(level string, stamp int64, keepPartial bool) {
	t := r.t
	t.Helper()
	m := r.dial()
	defer m.Close()
	up := strings.ToUpper(level)
	bitmap := "qmpbackup-" + r.uuid
	if level == "copy" {
		bitmap = "qmpbackup-copy-" + r.uuid
	}
	var actions []map[string]any
	var jobs, partials, fleeces []string
	for _, d := range r.q.Disks {
		base := filepath.Base(d.Path)
		dir := filepath.Join(r.target, base)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		part := filepath.Join(dir, fmt.Sprintf("%s-%d-%s.partial", up, stamp, base))
		fleece := filepath.Join(filepath.Dir(d.Path), fmt.Sprintf("%s-%d-%s.fleece.qcow2", up, stamp, d.Node))
		size := fmt.Sprintf("size=%d", r.q.Spec.DiskMiB<<20)
		for _, f := range []string{part, fleece} {
			if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", f, "-o", size, "-o", "compat=1.1", "-o", "cluster_size=65536").CombinedOutput(); err != nil {
				t.Fatalf("qemu-img create %s: %v: %s", f, err, out)
			}
		}
		partials, fleeces = append(partials, part), append(fleeces, fleece)
		s := "qmpbackup-" + d.Node
		r.exec(m, "blockdev-add", map[string]any{"driver": "qcow2", "node-name": s, "file": map[string]any{"driver": "file", "filename": part, "aio": "threads"}})
		r.exec(m, "blockdev-add", map[string]any{"driver": "qcow2", "node-name": s + "-fleece", "file": map[string]any{"driver": "file", "filename": fleece}})
		cbw := map[string]any{"driver": "copy-before-write", "node-name": s + "-cbw", "file": d.Node, "target": s + "-fleece",
			"on-cbw-error": "break-snapshot", "cbw-timeout": 45}
		if level == "inc" {
			cbw["bitmap"] = map[string]any{"node": d.Node, "name": bitmap}
		}
		r.exec(m, "blockdev-add", cbw)
		r.exec(m, "qom-set", map[string]any{"path": r.qdev[d.Node], "property": "drive", "value": s + "-cbw"})
		r.exec(m, "blockdev-add", map[string]any{"driver": "snapshot-access", "file": s + "-cbw", "node-name": s + "-snap"})
		job := "qmpbackup." + d.Node + "." + base
		jobs = append(jobs, job)
		backup := map[string]any{"device": s + "-snap", "target": s, "job-id": job, "auto-dismiss": false}
		switch level {
		case "full", "copy":
			var nodes []struct {
				NodeName string `json:"node-name"`
				Bitmaps  []struct {
					Name string `json:"name"`
				} `json:"dirty-bitmaps"`
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := m.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			exists := false
			for _, n := range nodes {
				for _, b := range n.Bitmaps {
					exists = exists || (n.NodeName == d.Node && b.Name == bitmap)
				}
			}
			if exists {
				actions = append(actions, map[string]any{"type": "block-dirty-bitmap-clear", "data": map[string]any{"node": d.Node, "name": bitmap}})
			} else {
				actions = append(actions, map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": d.Node, "name": bitmap, "persistent": level == "full"}})
			}
			backup["sync"] = "full"
		case "inc":
			actions = append(actions,
				map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": s + "-snap", "name": bitmap}},
				map[string]any{"type": "block-dirty-bitmap-merge", "data": map[string]any{"node": s + "-snap", "target": bitmap,
					"bitmaps": []any{map[string]any{"node": d.Node, "name": bitmap}}}})
			backup["sync"], backup["bitmap"] = "incremental", bitmap
		}
		actions = append(actions, map[string]any{"type": "blockdev-backup", "data": backup})
		if level == "inc" {
			actions = append(actions, map[string]any{"type": "block-dirty-bitmap-clear", "data": map[string]any{"node": d.Node, "name": bitmap}})
		}
	}
	r.exec(m, "transaction", map[string]any{"actions": actions})
	r.waitJobs(m, jobs)
	for _, d := range r.q.Disks {
		s := "qmpbackup-" + d.Node
		r.exec(m, "blockdev-del", map[string]any{"node-name": s + "-snap"})
		r.exec(m, "qom-set", map[string]any{"path": r.qdev[d.Node], "property": "drive", "value": d.Node})
		for _, n := range []string{s + "-cbw", s, s + "-fleece"} {
			r.exec(m, "blockdev-del", map[string]any{"node-name": n})
		}
		if level == "copy" {
			r.exec(m, "block-dirty-bitmap-remove", map[string]any{"node": d.Node, "name": bitmap})
		}
	}
	for _, f := range fleeces {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	if keepPartial {
		return
	}
	for _, p := range partials {
		if err := os.Rename(p, strings.TrimSuffix(p, ".partial")); err != nil {
			t.Fatal(err)
		}
	}
}

// waitJobs waits until every job concluded, fails the test on a job error and
// dismisses them.
func (r *qbRunner) waitJobs(m *qmp.Monitor, ids []string) {
	t := r.t
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var jobs []qmp.JobInfo
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := m.Execute(ctx, "query-jobs", nil, &jobs)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		done := 0
		for _, j := range jobs {
			for _, id := range ids {
				if j.ID == id && j.Status == "concluded" {
					if j.Error != "" {
						t.Fatalf("job %s: %s", id, j.Error)
					}
					done++
				}
			}
		}
		if done == len(ids) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backup jobs did not conclude: %+v", jobs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, id := range ids {
		r.exec(m, "job-dismiss", map[string]any{"id": id})
	}
}

// treeSums is the sha256 of every file under dir, by relative path.
func treeSums(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = hex.EncodeToString(h.Sum(nil))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

type qbListRow struct {
	Guest, UUID, ID, Level, Chain, Parent, Consistency, State, Reason, Format, Dir string
	Time                                                                           time.Time
	Size                                                                           uint64
	VirtualSize                                                                    uint64 `json:"virtual_size"`
	Disks                                                                          []string
}

// TestQmpbackupChainListRestore makes a qmpbackup chain of a standalone QEMU with
// qmpbackup's QMP sequence (full, inc, copy, inc, inc, and an inc left .partial as a
// killed run leaves it), with known data written between the points; backup list
// shows every point (the .partial one incomplete), restore --until of each complete
// point is bit-identical to both disks at that point, the incomplete one is refused,
// --define is refused with the reason, and qmpbackup's files are not changed.
func TestQmpbackupChainListRestore(t *testing.T) {
	q := testbed.StartQEMU(t, testbed.QEMUSpec{Disks: 2, DiskMiB: 32})
	target := filepath.Join(t.TempDir(), "web1")
	qb := newQBRunner(t, q, target)

	type step struct {
		level   string
		partial bool
	}
	steps := []step{{"full", false}, {"inc", false}, {"inc", false}, {"copy", false}, {"inc", false}, {"inc", true}}
	stamp0 := time.Now().Add(-time.Hour).Unix()
	sums := make([][]string, len(steps)) // per step, per disk: the disk's content at that point
	for i, s := range steps {
		// Known data before every point: a region per step on each disk, partly
		// overwriting the previous step's, plus zeroes over data on vdb.
		for di := range q.Disks {
			q.WriteDisk(t, di, int64(i)*(3<<20)+int64(di)*(1<<20), byte(0x10*(i+1)+di), 2<<20)
		}
		if i >= 2 {
			q.WriteDisk(t, 1, int64(i-2)*(3<<20), 0, 256<<10)
		}
		sums[i] = make([]string, len(q.Disks))
		for di, d := range q.Disks {
			sums[i][di] = testbed.ImageSum(t, d.Path)
		}
		qb.backup(s.level, stamp0+int64(i)*60, s.partial)
	}
	before := treeSums(t, target)

	r := mustRun(t, "-o", "json", "backup", "list", "--target", target)
	var rows []qbListRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("%v: %s", err, r.stdout)
	}
	if len(rows) != len(steps) {
		t.Fatalf("%d points listed, want %d", len(rows), len(steps))
	}
	for i, s := range steps {
		row := rows[i]
		wantState := "complete"
		if s.partial {
			wantState = "incomplete"
		}
		if row.Level != s.level || row.State != wantState || row.Format != "qmpbackup" || row.Guest != "web1" || row.UUID != qb.uuid ||
			!row.Time.Equal(time.Unix(stamp0+int64(i)*60, 0)) || strings.Join(row.Disks, ",") != "vda,vdb" ||
			row.VirtualSize != 2*32<<20 || row.Consistency != "crash" || row.Size == 0 {
			t.Errorf("row %d: %+v, want a %s point, %s", i, row, s.level, wantState)
		}
	}
	if rows[1].Chain != rows[0].ID || rows[1].Parent != rows[0].ID || rows[4].Parent != rows[2].ID || rows[4].Chain != rows[0].ID || rows[3].Chain != "" {
		t.Errorf("chains: %+v", rows)
	}
	if !strings.Contains(rows[5].Reason, ".partial") {
		t.Errorf("the incomplete point's reason: %q", rows[5].Reason)
	}

	out := t.TempDir()
	for i, s := range steps {
		if s.partial {
			continue
		}
		to := filepath.Join(out, fmt.Sprint(i))
		format := "qcow2"
		until := rows[i].ID
		if i == 2 {
			format = "raw"
			// qmprestore's --until names a file; so may autosnap's.
			until = fmt.Sprintf("INC-%d-vda.qcow2", stamp0+int64(i)*60)
		}
		mustRun(t, "--vmid", "web1", "restore", "--target", target, "--until", until, "--to", to, "--format", format)
		for di, d := range q.Disks {
			file := filepath.Join(to, strings.TrimSuffix(filepath.Base(d.Path), ".qcow2")+"."+format)
			if got := testbed.ImageSum(t, file); got != sums[i][di] {
				t.Errorf("point %d (%s) disk %s restored from the chain differs from the disk at that point", i, s.level, d.Target)
			}
			if st, err := os.Stat(file); err != nil || st.Mode().Perm() != 0o600 {
				t.Errorf("%s: %v %v", file, st.Mode(), err)
			}
		}
	}
	// Without --until: the newest complete point, not the .partial one.
	mustRun(t, "--vmid", qb.uuid, "restore", "--target", target, "--to", filepath.Join(out, "newest"))
	if got := testbed.ImageSum(t, filepath.Join(out, "newest", "vdb.qcow2")); got != sums[4][1] {
		t.Errorf("restore without --until did not restore the newest complete point")
	}
	r = run(t, "--vmid", "web1", "restore", "--target", target, "--until", rows[5].ID, "--to", filepath.Join(out, "partial"))
	if r.code != ExitFailure || !strings.Contains(r.stderr, "incomplete") {
		t.Errorf("restore of the .partial point: exit %d %s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(out, "partial")); err == nil {
		t.Errorf("the refused restore created its --to directory")
	}
	r = run(t, "--vmid", "web1", "restore", "--target", target, "--define", "web2", "--to", filepath.Join(out, "def"))
	if r.code != ExitUsage || !strings.Contains(r.stderr, "no guest definition") || !strings.Contains(r.stderr, "--to") {
		t.Errorf("--define from qmpbackup: exit %d %s", r.code, r.stderr)
	}
	if after := treeSums(t, target); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("listing and restoring changed qmpbackup's files:\nbefore %v\nafter  %v", before, after)
	}
}
