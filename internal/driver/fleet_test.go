package driver

import (
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
)

// capabilities lists every optional capability a driver may have. A Fleet must forward
// each of them; TestFleetCapabilityListIsComplete fails when package driver declares an
// interface that is neither listed here nor in notCapabilities, so a new capability
// cannot be added without its forwarding being tested.
var capabilities = []reflect.Type{
	reflect.TypeFor[Protector](),
	reflect.TypeFor[AgentPinger](),
	reflect.TypeFor[Quiescer](),
	reflect.TypeFor[StorageReporter](),
	reflect.TypeFor[SnapshotChecker](),
	reflect.TypeFor[Tagger](),
	reflect.TypeFor[TagLoader](),
	reflect.TypeFor[ChainReporter](),
	reflect.TypeFor[ChainInspector](),
	reflect.TypeFor[TreeDeleter](),
	reflect.TypeFor[SnapshotXMLer](),
	reflect.TypeFor[CurrentSetter](),
	reflect.TypeFor[SnapshotEditor](),
	reflect.TypeFor[ChainCollapser](),
	reflect.TypeFor[StallBounded](),
	reflect.TypeFor[SnapshotPreparer](),
	reflect.TypeFor[RevertNoter](),
	reflect.TypeFor[Backupper](),
	reflect.TypeFor[BitmapInspector](),
}

// notCapabilities are the interfaces of package driver that a driver does not add on
// its own: the core every driver implements, and what a capability returns.
var notCapabilities = map[string]string{
	"Driver":           "the core interface",
	"PreparedSnapshot": "returned by SnapshotPreparer, not a driver capability",
	"GuestDefiner":     "defines a new guest on the one host restore --define is given; a Fleet does not forward it",
	"GuestRemover":     "removes the throwaway guests verify --boot defines through GuestDefiner, on that one host",
	"DiskStater":       "used by restore --instant with GuestDefiner, on that one host",
}

// neutral names the capability methods whose absence has a defined meaning, so a Fleet
// whose member lacks them answers as that member would instead of failing: no checker
// means every guest can be snapshotted, no tag loader means Guests filled in the tags,
// a member without StallBounded is not stall-bounded, and a revert without notes is a
// plain revert.
var neutral = map[string]bool{
	"CheckSnapshot":       true,
	"LoadTags":            true,
	"StallBounded":        true,
	"RevertSnapshotNotes": true,
}

func TestFleetCapabilityListIsComplete(t *testing.T) {
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, ".", func(fi fs.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, 0)
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, c := range capabilities {
		listed[c.Name()] = true
	}
	var declared []string
	for _, p := range pkgs {
		for _, f := range p.Files {
			ast.Inspect(f, func(n ast.Node) bool {
				ts, ok := n.(*ast.TypeSpec)
				if !ok || !ts.Name.IsExported() {
					return true
				}
				if _, isIface := ts.Type.(*ast.InterfaceType); isIface {
					declared = append(declared, ts.Name.Name)
				}
				return true
			})
		}
	}
	sort.Strings(declared)
	if len(declared) < len(capabilities) {
		t.Fatalf("found only interfaces %v in package driver", declared)
	}
	for _, name := range declared {
		if !listed[name] && notCapabilities[name] == "" {
			t.Errorf("package driver declares interface %s, which is neither in capabilities (forwarded by Fleet and tested here) nor in notCapabilities: add it to one", name)
		}
	}
	for name := range listed {
		if !slices.Contains(declared, name) {
			t.Errorf("capabilities lists %s, which package driver does not declare", name)
		}
	}
}

// call is one call a recording member received.
type call struct {
	method string
	args   []any // without the context
}

// memberErr is what a recording member returns, so a test can tell which member
// answered which method.
type memberErr struct{ node, method string }

func (e *memberErr) Error() string { return e.node + ": " + e.method }

// recorder is a fake member that has every capability: it records each call and
// answers with a memberErr naming itself.
type recorder struct {
	node  string
	stall bool
	mu    sync.Mutex
	calls []call
}

func (r *recorder) rec(method string, args ...any) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call{method, args})
	return &memberErr{r.node, method}
}

func (r *recorder) recorded() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

func (r *recorder) Name() string { return "fake" }
func (r *recorder) Guests(context.Context) ([]Guest, error) {
	return []Guest{{Node: r.node, Name: "g-" + r.node, UUID: "uuid-" + r.node}}, nil
}
func (r *recorder) Snapshots(_ context.Context, g Guest) ([]Snapshot, error) {
	return nil, r.rec("Snapshots", g)
}
func (r *recorder) CreateSnapshot(_ context.Context, g Guest, o CreateOptions) (Snapshot, error) {
	return Snapshot{}, r.rec("CreateSnapshot", g, o)
}
func (r *recorder) DeleteSnapshot(_ context.Context, g Guest, name string) error {
	return r.rec("DeleteSnapshot", g, name)
}
func (r *recorder) RevertSnapshot(_ context.Context, g Guest, name string, o RevertOptions) error {
	return r.rec("RevertSnapshot", g, name, o)
}
func (r *recorder) Close() error                               { return nil }
func (r *recorder) AgentPing(_ context.Context, g Guest) error { return r.rec("AgentPing", g) }
func (r *recorder) Freeze(_ context.Context, g Guest) (int, error) {
	return 0, r.rec("Freeze", g)
}
func (r *recorder) Thaw(_ context.Context, g Guest) (int, error) { return 0, r.rec("Thaw", g) }
func (r *recorder) FrozenState(_ context.Context, g Guest) (bool, error) {
	return false, r.rec("FrozenState", g)
}
func (r *recorder) Storage(_ context.Context, g Guest) ([]StorageUsage, error) {
	return nil, r.rec("Storage", g)
}
func (r *recorder) CheckSnapshot(_ context.Context, g Guest) error {
	return r.rec("CheckSnapshot", g)
}
func (r *recorder) SetTags(_ context.Context, g Guest, tags []string) error {
	return r.rec("SetTags", g, tags)
}
func (r *recorder) LoadTags(_ context.Context, gs []Guest) error {
	for i := range gs {
		gs[i].Tags = []string{"from-" + r.node}
	}
	_ = r.rec("LoadTags", slices.Clone(gs))
	return nil
}
func (r *recorder) Chains(_ context.Context, g Guest) ([]ChainInfo, error) {
	return nil, r.rec("Chains", g)
}
func (r *recorder) ChainDetails(_ context.Context, g Guest) ([]ChainDetail, error) {
	return nil, r.rec("ChainDetails", g)
}
func (r *recorder) DeleteSnapshotTree(_ context.Context, g Guest, name string, o DeleteOptions) error {
	o.Progress = nil // functions are not comparable
	return r.rec("DeleteSnapshotTree", g, name, o)
}
func (r *recorder) SnapshotXML(_ context.Context, g Guest, name string) (string, error) {
	return "", r.rec("SnapshotXML", g, name)
}
func (r *recorder) RedefineSnapshot(_ context.Context, g Guest, xml string, current bool) error {
	return r.rec("RedefineSnapshot", g, xml, current)
}
func (r *recorder) SetCurrent(_ context.Context, g Guest, name string) error {
	return r.rec("SetCurrent", g, name)
}
func (r *recorder) EditSnapshot(_ context.Context, g Guest, name string, o EditOptions) error {
	return r.rec("EditSnapshot", g, name, o)
}
func (r *recorder) CollapseChain(_ context.Context, g Guest, o CollapseOptions) error {
	o.Progress = nil
	return r.rec("CollapseChain", g, o)
}
func (r *recorder) StallBounded() bool { return r.stall }
func (r *recorder) PrepareSnapshot(_ context.Context, g Guest, o CreateOptions) (PreparedSnapshot, error) {
	return nil, r.rec("PrepareSnapshot", g, o)
}
func (r *recorder) RevertSnapshotNotes(_ context.Context, g Guest, name string, o RevertOptions, note func(string)) error {
	note("note from " + r.node)
	return r.rec("RevertSnapshotNotes", g, name, o)
}
func (r *recorder) BackupSource(_ context.Context, g Guest) (BackupSource, error) {
	return BackupSource{}, r.rec("BackupSource", g)
}
func (r *recorder) Backup(_ context.Context, g Guest, req BackupRequest) (BackupResult, error) {
	req.Freeze, req.Progress = nil, nil // functions are not comparable
	return BackupResult{}, r.rec("Backup", g, req)
}
func (r *recorder) DeleteCheckpoint(_ context.Context, g Guest, name string) error {
	return r.rec("DeleteCheckpoint", g, name)
}
func (r *recorder) Bitmaps(_ context.Context, g Guest) ([]Bitmap, error) {
	return nil, r.rec("Bitmaps", g)
}
func (r *recorder) RemoveOrphanBitmaps(_ context.Context, g Guest, bms []Bitmap) error {
	return r.rec("RemoveOrphanBitmaps", g, bms)
}

// bare is a member with no optional capability at all; it records into r.
type bare struct{ r *recorder }

func (b *bare) Name() string                                { return "bare" }
func (b *bare) Guests(ctx context.Context) ([]Guest, error) { return b.r.Guests(ctx) }
func (b *bare) Snapshots(ctx context.Context, g Guest) ([]Snapshot, error) {
	return b.r.Snapshots(ctx, g)
}
func (b *bare) CreateSnapshot(ctx context.Context, g Guest, o CreateOptions) (Snapshot, error) {
	return b.r.CreateSnapshot(ctx, g, o)
}
func (b *bare) DeleteSnapshot(ctx context.Context, g Guest, name string) error {
	return b.r.DeleteSnapshot(ctx, g, name)
}
func (b *bare) RevertSnapshot(ctx context.Context, g Guest, name string, o RevertOptions) error {
	return b.r.RevertSnapshot(ctx, g, name, o)
}
func (b *bare) Close() error { return nil }

// as returns f as capability T, failing the test when the Fleet lacks it.
func as[T any](t *testing.T, f *Fleet) T {
	t.Helper()
	c, ok := any(f).(T)
	if !ok {
		t.Fatalf("Fleet does not implement %s", reflect.TypeFor[T]())
	}
	return c
}

// fleetMethod returns the Fleet's method name, failing the test when it has none.
func fleetMethod(t *testing.T, f *Fleet, name string) reflect.Value {
	t.Helper()
	v := reflect.ValueOf(f).MethodByName(name)
	if !v.IsValid() {
		t.Fatalf("Fleet has no method %s", name)
	}
	return v
}

// onlyCore hides every method of a member but Driver's.
func onlyCore(d Driver) Driver { return struct{ Driver }{d} }

// argsFor builds arguments for a capability method: the context, the guest for a Guest
// parameter, guests of every host for []Guest, and a distinct non-zero value for
// anything else, so the test can see they reach the member unchanged.
func argsFor(t *testing.T, m reflect.Method, g Guest, all []Guest) []reflect.Value {
	t.Helper()
	var args []reflect.Value
	for i := 0; i < m.Type.NumIn(); i++ {
		pt := m.Type.In(i)
		switch {
		case pt == reflect.TypeFor[context.Context]():
			args = append(args, reflect.ValueOf(context.Background()))
		case pt == reflect.TypeFor[Guest]():
			args = append(args, reflect.ValueOf(g))
		case pt == reflect.TypeFor[[]Guest]():
			args = append(args, reflect.ValueOf(slices.Clone(all)))
		case pt == reflect.TypeFor[string]():
			args = append(args, reflect.ValueOf(fmt.Sprintf("%s-arg%d", m.Name, i)))
		case pt == reflect.TypeFor[bool]():
			args = append(args, reflect.ValueOf(true))
		case pt == reflect.TypeFor[[]string]():
			args = append(args, reflect.ValueOf([]string{m.Name, "x"}))
		case pt == reflect.TypeFor[CreateOptions]():
			args = append(args, reflect.ValueOf(CreateOptions{Name: m.Name, Quiesce: true}))
		case pt == reflect.TypeFor[RevertOptions]():
			args = append(args, reflect.ValueOf(RevertOptions{Running: true, Force: true}))
		case pt == reflect.TypeFor[DeleteOptions]():
			args = append(args, reflect.ValueOf(DeleteOptions{Children: true, MetadataOnly: true}))
		case pt == reflect.TypeFor[EditOptions]():
			d := m.Name
			args = append(args, reflect.ValueOf(EditOptions{Description: &d, Rename: "new"}))
		case pt == reflect.TypeFor[CollapseOptions]():
			args = append(args, reflect.ValueOf(CollapseOptions{Disk: "vdb", ForceBase: []string{"/b"}}))
		case pt == reflect.TypeFor[BackupRequest]():
			args = append(args, reflect.ValueOf(BackupRequest{Level: LevelInc, Since: "a", Checkpoint: "b", Targets: []BackupTarget{{Disk: "vda", File: "/f", Backing: "p"}}}))
		case pt == reflect.TypeFor[[]Bitmap]():
			args = append(args, reflect.ValueOf([]Bitmap{{Disk: "vda", Image: "/i", Name: "autosnap-x"}}))
		case pt == reflect.TypeFor[func(string)]():
			args = append(args, reflect.ValueOf(func(string) {}))
		default:
			t.Fatalf("%s: no test value for a parameter of type %s: extend argsFor", m.Name, pt)
		}
	}
	return args
}

// takesGuest reports whether a method addresses one guest, which the Fleet routes to
// that guest's host.
func takesGuest(m reflect.Method) bool {
	for i := 0; i < m.Type.NumIn(); i++ {
		if m.Type.In(i) == reflect.TypeFor[Guest]() {
			return true
		}
	}
	return false
}

// errorOf returns the error result of a call, nil when there is none or it is nil.
func errorOf(out []reflect.Value) error {
	for _, v := range out {
		if v.Type() == reflect.TypeFor[error]() && !v.IsNil() {
			return v.Interface().(error)
		}
	}
	return nil
}

func twoHosts(t *testing.T) (*Fleet, *recorder, *recorder, []Guest) {
	t.Helper()
	h1, h2 := &recorder{node: "h1"}, &recorder{node: "h2"}
	f := NewFleet([]Driver{h1, h2})
	all, err := f.Guests(context.Background())
	if err != nil || len(all) != 2 {
		t.Fatalf("Guests = %v, %v", all, err)
	}
	return f, h1, h2, all
}

// TestFleetForwardsEveryCapability calls every method of every capability on a Fleet of
// two recording hosts and checks that the call reached the guest's host, and only it,
// with the same arguments, and that its answer came back unchanged.
func TestFleetForwardsEveryCapability(t *testing.T) {
	fleetType := reflect.TypeFor[*Fleet]()
	for _, c := range capabilities {
		if !fleetType.Implements(c) {
			t.Errorf("Fleet does not implement %s: a fleet of hosts would silently lose it", c.Name())
		}
		if !reflect.TypeFor[*recorder]().Implements(c) {
			t.Fatalf("the recording member does not implement %s: add it to recorder", c.Name())
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	for _, c := range capabilities {
		for i := 0; i < c.NumMethod(); i++ {
			m := c.Method(i)
			t.Run(c.Name()+"."+m.Name, func(t *testing.T) {
				f, h1, h2, all := twoHosts(t)
				g := all[1] // on h2
				switch {
				case takesGuest(m):
					args := argsFor(t, m, g, all)
					out := fleetMethod(t, f, m.Name).Call(args)
					calls := h2.recorded()
					if len(h1.recorded()) != 0 {
						t.Errorf("%s for a guest of h2 reached h1: %+v", m.Name, h1.recorded())
					}
					if len(calls) != 1 || calls[0].method != m.Name {
						t.Fatalf("%s through the fleet: h2 received %+v, want one %s", m.Name, calls, m.Name)
					}
					var want []any
					for _, a := range args[1:] {
						if a.Kind() == reflect.Func {
							continue
						}
						want = append(want, a.Interface())
					}
					got := calls[0].args
					if m.Name == "DeleteSnapshotTree" || m.Name == "CollapseChain" {
						want = want[:len(want)-1]
						got = got[:len(got)-1]
					}
					if !reflect.DeepEqual(got, want) {
						t.Errorf("%s: h2 got arguments %#v, want %#v", m.Name, got, want)
					}
					var me *memberErr
					if err := errorOf(out); !errors.As(err, &me) || me.node != "h2" || me.method != m.Name {
						t.Errorf("%s: the fleet returned %v, want h2's own answer", m.Name, err)
					}
				case m.Name == "LoadTags":
					gs := []Guest{all[0], all[1], all[0]}
					if err := as[TagLoader](t, f).LoadTags(context.Background(), gs); err != nil {
						t.Fatal(err)
					}
					for _, x := range gs {
						if len(x.Tags) != 1 || x.Tags[0] != "from-"+x.Node {
							t.Errorf("guest on %s got tags %v, want its own host's", x.Node, x.Tags)
						}
					}
					if n1, n2 := len(h1.recorded()), len(h2.recorded()); n1 != 1 || n2 != 1 {
						t.Errorf("LoadTags calls: h1 %d, h2 %d; want one batch per host", n1, n2)
					}
					if c := h1.recorded(); len(c) == 1 && len(c[0].args[0].([]Guest)) != 2 {
						t.Errorf("h1 got %v, want its two guests", c[0].args[0])
					}
				case m.Name == "StallBounded":
					h1.stall, h2.stall = true, true
					if !as[StallBounded](t, f).StallBounded() {
						t.Error("fleet of stall-bounded hosts is not stall-bounded")
					}
					h1.stall = false
					if as[StallBounded](t, f).StallBounded() {
						t.Error("fleet with one host that is not stall-bounded claims to be")
					}
				default:
					t.Fatalf("%s.%s addresses no single guest and has no forwarding test: add one", c.Name(), m.Name)
				}
			})
		}
	}
}

// TestFleetMemberLackingCapability: a host whose driver lacks a capability makes the
// Fleet fail with an error wrapping ErrUnsupported that names the host, except where
// the absence has a defined meaning (see neutral).
func TestFleetMemberLackingCapability(t *testing.T) {
	b := &bare{&recorder{node: "plainhost"}}
	f := NewFleet([]Driver{b})
	all, err := f.Guests(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	g := all[0]
	for _, c := range capabilities {
		for i := 0; i < c.NumMethod(); i++ {
			m := c.Method(i)
			if neutral[m.Name] || !takesGuest(m) {
				continue
			}
			t.Run(c.Name()+"."+m.Name, func(t *testing.T) {
				out := fleetMethod(t, f, m.Name).Call(argsFor(t, m, g, all))
				err := errorOf(out)
				if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "plainhost") || !strings.Contains(err.Error(), g.Name) {
					t.Errorf("%s on a host without %s: %v; want ErrUnsupported naming the guest and host plainhost", m.Name, c.Name(), err)
				}
			})
		}
	}
	t.Run("neutral", func(t *testing.T) {
		ctx := context.Background()
		if err := as[SnapshotChecker](t, f).CheckSnapshot(ctx, g); err != nil {
			t.Errorf("CheckSnapshot on a host without checks: %v, want nil (every guest can be snapshotted)", err)
		}
		gs := []Guest{{Node: g.Node, Name: g.Name, Tags: []string{"kept"}}}
		if err := as[TagLoader](t, f).LoadTags(ctx, gs); err != nil || len(gs[0].Tags) != 1 || gs[0].Tags[0] != "kept" {
			t.Errorf("LoadTags on a host that lists tags: %v, tags %v; want nil and the tags kept", err, gs[0].Tags)
		}
		if as[StallBounded](t, f).StallBounded() {
			t.Error("a fleet with a host that is not stall-bounded claims to be")
		}
		var notes []string
		err := as[RevertNoter](t, f).RevertSnapshotNotes(ctx, g, "s1", RevertOptions{Force: true}, func(s string) { notes = append(notes, s) })
		var me *memberErr
		if !errors.As(err, &me) || me.method != "RevertSnapshot" || len(notes) != 0 {
			t.Errorf("RevertSnapshotNotes on a host without notes: %v, notes %v; want a plain RevertSnapshot", err, notes)
		}
	})
}

// TestFleetUnknownHost: a guest of a host the Fleet is not connected to fails every
// capability with ErrNotFound naming the host.
func TestFleetUnknownHost(t *testing.T) {
	f, h1, h2, all := twoHosts(t)
	g := Guest{Node: "elsewhere", Name: "lost"}
	for _, c := range capabilities {
		for i := 0; i < c.NumMethod(); i++ {
			m := c.Method(i)
			if !takesGuest(m) {
				continue
			}
			out := fleetMethod(t, f, m.Name).Call(argsFor(t, m, g, all))
			if err := errorOf(out); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "elsewhere") {
				t.Errorf("%s for a guest of an unknown host: %v, want ErrNotFound naming the host", m.Name, err)
			}
		}
	}
	if err := as[TagLoader](t, f).LoadTags(context.Background(), []Guest{g}); !errors.Is(err, ErrNotFound) {
		t.Errorf("LoadTags for a guest of an unknown host: %v, want ErrNotFound", err)
	}
	if len(h1.recorded())+len(h2.recorded()) != 0 {
		t.Errorf("calls for an unknown host reached a member: %v %v", h1.recorded(), h2.recorded())
	}
}

// TestFleetRoutesCore: the core methods go to the guest's host; a host is found by the
// name its driver reports even before Guests was called.
func TestFleetRoutesCore(t *testing.T) {
	h1, h2 := &recorder{node: "h1"}, &named{recorder{node: "h2"}}
	f := NewFleet([]Driver{h1, h2})
	g := Guest{Node: "h2", Name: "g-h2"}
	ctx := context.Background()
	_, _ = f.Snapshots(ctx, g)
	_, _ = f.CreateSnapshot(ctx, g, CreateOptions{Name: "a"})
	_ = f.DeleteSnapshot(ctx, g, "a")
	_ = f.RevertSnapshot(ctx, g, "a", RevertOptions{})
	var got []string
	for _, c := range h2.recorded() {
		got = append(got, c.method)
	}
	if strings.Join(got, ",") != "Snapshots,CreateSnapshot,DeleteSnapshot,RevertSnapshot" || len(h1.recorded()) != 0 {
		t.Errorf("h2 received %v, h1 %v", got, h1.recorded())
	}
}

// named is a recorder that reports its host name as the libvirt driver does.
type named struct{ recorder }

func (n *named) Node() string { return n.node }

func TestFleetDuplicateHostName(t *testing.T) {
	f := NewFleet([]Driver{&recorder{node: "same"}, &recorder{node: "same"}})
	if _, err := f.Guests(context.Background()); err == nil || !strings.Contains(err.Error(), "same") {
		t.Errorf("two hosts with one name: %v", err)
	}
}

func TestFleetGuestsFailsWhenAHostFails(t *testing.T) {
	f := NewFleet([]Driver{&recorder{node: "h1"}, onlyCore(&failing{recorder{node: "down"}})})
	if _, err := f.Guests(context.Background()); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("a failing host: %v, want its error", err)
	}
}

type failing struct{ recorder }

func (f *failing) Guests(context.Context) ([]Guest, error) { return nil, errors.New("boom") }
