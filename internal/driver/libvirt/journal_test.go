package libvirt

import (
	"context"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/journal"
)

// linearTree is snapshots P, S, C taken in a row on vda: states B, OP, OS; overlays
// OP, OS, OC (the active image). S has a memory file.
func linearTree() *snapTree {
	meta := func(name, parent, state, overlay string) *snapMeta {
		return &snapMeta{x: &libvirtxml.DomainSnapshot{Name: name}, parent: parent,
			overlays: map[string]string{"vda": overlay}, states: map[string]string{"vda": state}}
	}
	t := &snapTree{byName: map[string]*snapMeta{
		"P": meta("P", "", "B", "OP"),
		"S": meta("S", "P", "OP", "OS"),
		"C": meta("C", "S", "OS", "OC"),
	}, order: []string{"P", "S", "C"}}
	t.byName["S"].x.Memory = &libvirtxml.DomainSnapshotMemory{Snapshot: "external", File: "/img/S.mem"}
	return t
}

// planDelete plans deleting the snapshots del of linearTree on a live chain and
// records it, as deleteTree does.
func planDelete(t *testing.T, del ...string) *mergeRecord {
	t.Helper()
	tr := linearTree()
	g := graph("OC", true, "B:", "OP:B", "OS:OP", "OC:OS", "X:OP") // X: a branch nobody names
	g.nodes["X"].live = false
	deleted := map[string]bool{}
	for _, n := range del {
		deleted[n] = true
	}
	for _, n := range tr.order {
		m := tr.byName[n]
		if deleted[n] {
			g.removable[m.overlays["vda"]] = true
			g.mergeable[m.states["vda"]] = true
		} else {
			g.pins[m.states["vda"]] = append(g.pins[m.states["vda"]], n)
		}
	}
	graphs := map[string]*diskGraph{"vda": g}
	in := chainSets(graphs)
	steps := g.plan()
	now := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	return newMergeRecord(now, "vm1", "00000000-0000-0000-0000-000000000001", tr, del, del, steps, in)
}

func TestNewMergeRecord(t *testing.T) {
	rec := planDelete(t, "S")
	// S's state OP has a branch X besides OS: it cannot absorb anything; S's overlay OS
	// is C's state. Nothing may change: the step list is empty.
	if len(rec.Steps) != 0 || len(rec.partlyMerged()) != 0 {
		t.Errorf("deleting S at a branch point: steps %+v", rec.Steps)
	}
	if !reflect.DeepEqual(rec.Memory, []string{"/img/S.mem"}) {
		t.Errorf("memory files: %v", rec.Memory)
	}

	rec = planDelete(t, "C")
	want := []mergeRecordStep{{Kind: "commit", Disk: "vda", Base: "OS", Top: "OC", ActiveTop: true, Live: true, InChain: true,
		Touches: []string{"C"}, Status: stepPlanned}}
	if !reflect.DeepEqual(rec.Steps, want) {
		t.Errorf("deleting C:\n got %+v\nwant %+v", rec.Steps, want)
	}

	rec = planDelete(t, "P")
	// P's state B absorbs OP (S's state stays OP's content, now in B).
	want = []mergeRecordStep{{Kind: "commit", Disk: "vda", Base: "B", Top: "OP", Above: []string{"OS", "X"}, Live: true, InChain: true,
		Touches: []string{"P"}, Status: stepPlanned}}
	if !reflect.DeepEqual(rec.Steps, want) {
		t.Errorf("deleting P:\n got %+v\nwant %+v", rec.Steps, want)
	}
}

func TestMergeRecordRoundTrip(t *testing.T) {
	st := journal.Open(t.TempDir())
	rec := planDelete(t, "P")
	rec.Steps[0].Status, rec.Steps[0].Mode = stepStarted, modeLive
	rec.Steps[0].StartedAt = time.Date(2025, 3, 4, 5, 6, 8, 0, time.UTC)
	rec.Replaced["OQ"] = "B"
	rec.LastError, rec.LastErrorAt = "stalled", time.Date(2025, 3, 4, 5, 7, 0, 0, time.UTC)
	key := mergeKey("host", golibvirt.Domain{UUID: golibvirt.UUID{15: 1}})
	if key != "merge/host/00000000-0000-0000-0000-000000000001" {
		t.Errorf("key %q", key)
	}
	if err := st.Put(key, rec); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(st.Path(key)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("record file: %v %v", fi, err)
	}
	var got mergeRecord
	if ok, err := st.Get(key, &got); !ok || err != nil {
		t.Fatalf("get: %v %v", ok, err)
	}
	if !reflect.DeepEqual(&got, rec) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, *rec)
	}
}

func TestIncompleteReasons(t *testing.T) {
	d := &Driver{node: "host", journal: journal.Open(t.TempDir())}
	dom := golibvirt.Domain{Name: "vm1", UUID: golibvirt.UUID{15: 1}}
	g := driver.Guest{Name: "vm1"}
	if r, err := d.incompleteReasons(t.Context(), g, dom); err != nil || len(r) != 0 {
		t.Fatalf("without a record: %v %v", r, err)
	}
	rec := planDelete(t, "P", "C")
	if len(rec.Steps) != 2 {
		t.Fatalf("steps %+v", rec.Steps)
	}
	if err := d.store().Put(mergeKey(d.node, dom), rec); err != nil {
		t.Fatal(err)
	}
	// Journaled, nothing started: the data is whole.
	if r, err := d.incompleteReasons(t.Context(), g, dom); err != nil || len(r) != 0 {
		t.Errorf("planned only: %v %v", r, err)
	}
	rec.Steps[0].Status = stepDone
	rec.Steps[1].Status = stepPlanned
	if err := d.store().Put(mergeKey(d.node, dom), rec); err != nil {
		t.Fatal(err)
	}
	r, err := d.incompleteReasons(t.Context(), g, dom)
	if err != nil {
		t.Fatal(err)
	}
	touched := rec.Steps[0].Touches[0]
	if len(r) != 1 || !strings.Contains(r[touched], "partly merged by an interrupted delete started "+rec.Started.Local().Format(time.DateTime)) ||
		!strings.Contains(r[touched], "not to be reverted to") {
		t.Errorf("reasons: %v", r)
	}
	if !strings.Contains(rec.left(), "1 of 2 merge steps left") {
		t.Errorf("left: %s", rec.left())
	}
}

func TestNextAction(t *testing.T) {
	chainStep := mergeRecordStep{Kind: "commit", Disk: "vda", Base: "B", Top: "T", Between: []string{"M"}, InChain: true, Status: stepPlanned}
	branchStep := mergeRecordStep{Kind: "commit", Disk: "vda", Base: "B", Top: "T", Status: stepPlanned}
	removeStep := mergeRecordStep{Kind: "remove", Disk: "vda", Top: "T", Status: stepPlanned}
	started := func(s mergeRecordStep) mergeRecordStep { s.Status = stepStarted; return s }
	present := stepObs{chain: []string{"A", "T", "M", "B"}, topExists: true, baseExists: true}
	with := func(o stepObs, f func(*stepObs)) stepObs { f(&o); return o }
	merged := with(present, func(o *stepObs) { o.chain = []string{"A", "B"}; o.topExists = false; o.missing = []string{"M"} })
	for _, tc := range []struct {
		name string
		s    mergeRecordStep
		o    stepObs
		want stepAction
		err  string
	}{
		{"offline guest", chainStep, present, actOffline, ""},
		{"running guest", chainStep, with(present, func(o *stepObs) { o.active = true }), actLive, ""},
		{"started offline, guest started since", started(chainStep), with(present, func(o *stepObs) { o.active = true }), actLive, ""},
		{"started live, guest shut down since", started(chainStep), present, actOffline, ""},
		{"job left running by the killed run", started(chainStep), with(present, func(o *stepObs) {
			o.active, o.job, o.jobType = true, true, golibvirt.DomainBlockJobTypeActiveCommit
		}), actAdopt, ""},
		{"someone else's job", chainStep, with(present, func(o *stepObs) { o.active, o.job = true, true }), 0, "another block job"},
		{"a copy job is not ours", started(chainStep), with(present, func(o *stepObs) {
			o.active, o.job, o.jobType = true, true, golibvirt.DomainBlockJobTypeCopy
		}), 0, "another block job"},
		{"merged by libvirt after the kill", started(chainStep), merged, actFinish, ""},
		{"left the chain unexplained", chainStep, merged, 0, "refusing to guess"},
		{"chain names a missing file", started(chainStep), with(present, func(o *stepObs) { o.topExists = false }), 0, "are gone"},
		{"base missing", started(chainStep), with(merged, func(o *stepObs) { o.baseExists = false }), 0, "B, the image the merge writes into, is gone"},
		{"branch: offline even when running", branchStep, with(present, func(o *stepObs) { o.active = true; o.chain = []string{"A", "B"} }), actOffline, ""},
		{"branch: merged and removed", started(branchStep), with(present, func(o *stepObs) { o.chain = []string{"A", "B"}; o.topExists = false }), actFinish, ""},
		{"branch: gone unexplained", branchStep, with(present, func(o *stepObs) { o.chain = []string{"A", "B"}; o.topExists = false }), 0, "never touched it"},
		{"branch: now in the chain", branchStep, present, 0, "now, although it was not"},
		{"remove", removeStep, present, actRemove, ""},
		{"remove: done", started(removeStep), with(present, func(o *stepObs) { o.topExists = false }), actFinish, ""},
		{"remove: gone unexplained", removeStep, with(present, func(o *stepObs) { o.topExists = false }), 0, "never touched it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := nextAction(tc.s, tc.o)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("got %v, %v; want an error containing %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestStallWatch(t *testing.T) {
	t0 := time.Unix(1000, 0)
	w := stallWatch{limit: 2 * time.Second}
	steps := []struct {
		at    time.Duration
		pos   uint64
		stall bool
	}{
		{0, 0, false},
		{1900 * time.Millisecond, 0, false},
		{2 * time.Second, 0, true}, // no progress for the limit
		{2100 * time.Millisecond, 5, false},
		{4 * time.Second, 9, false}, // slow but steady: never stalls
		{5 * time.Second, 9, false},
		{6 * time.Second, 9, true},
	}
	for _, s := range steps {
		if got := w.observe(s.pos, t0.Add(s.at)); got != s.stall {
			t.Errorf("at %s pos %d: stalled %v, want %v", s.at, s.pos, got, s.stall)
		}
	}
	w.reset(t0.Add(6 * time.Second))
	if w.observe(9, t0.Add(7*time.Second)) {
		t.Error("stalled right after a reset")
	}
	if (&stallWatch{}).observe(1, t0) || (&stallWatch{seen: true, pos: 1, since: t0}).observe(1, t0.Add(time.Hour)) {
		t.Error("a zero limit stalled")
	}
}

// TestRunProgressStall runs stand-ins for qemu-img -p: one that stops printing and
// writing is killed after the stall limit, one that progresses slowly but steadily for
// several times the limit completes, and started is called once, at the first
// progress above zero.
func TestRunProgressStall(t *testing.T) {
	const stall = 400 * time.Millisecond
	var starts int
	start := time.Now()
	err := runProgress(t.Context(), "vda", nil, stall, func() { starts++ },
		"sh", "-c", `printf '    (0.00/100%%)\r'; printf '    (1.00/100%%)\r'; exec sleep 30`)
	took := time.Since(start)
	if !errors.Is(err, errStalled) || took < stall || took > stall+3*time.Second {
		t.Errorf("stalled command: %v after %s", err, took)
	}
	if starts != 1 {
		t.Errorf("started called %d times", starts)
	}

	var last uint64
	start = time.Now()
	err = runProgress(t.Context(), "vda", func(_ string, done, total uint64) { last = done },
		stall, nil, "sh", "-c", `for i in 1 2 3 4 5 6 7 8 9 10 11 12; do printf '    (%d.00/100%%)\r' $i; sleep 0.2; done`)
	if err != nil || last != 1200 {
		t.Errorf("steady command: %v, last progress %d", err, last)
	}
	if took := time.Since(start); took < 3*stall {
		t.Errorf("the steady command took only %s", took)
	}

	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(200*time.Millisecond, cancel)
	err = runProgress(ctx, "vda", nil, 0, nil, "sleep", "30")
	if !errors.Is(err, context.Canceled) || errors.Is(err, errStalled) {
		t.Errorf("cancelled command: %v", err)
	}
}
