package libvirt

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/crash"
	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/journal"
)

// The merge executor. deleteTree plans (pure: plan.go), writes the plan to the journal
// as a mergeRecord before anything irreversible, and execute carries it out: each
// step is marked started before it runs and done after, then the remaining snapshots'
// metadata is rewritten, memory files are removed, the deleted snapshots are forgotten
// and the record is removed. A run cut off anywhere leaves the record; settle (called
// first by every operation that changes the guest) runs execute on it again.
//
// Every step is idempotent and decides at execution time how to run (the guest may
// have been started or shut down since the plan was written): a step is done when its
// top image has left the disk's chain (steps on images in the chain) or is gone
// (images outside it). A file found missing counts as merged only when the journal
// says the step that removes it started.

// Step states in a merge record.
const (
	stepPlanned = "planned"
	stepStarted = "started"
	stepDone    = "done"
)

// How a started commit step runs; recorded so that a resumed run knows whether libvirt
// deletes the merged files itself.
const (
	modeLive       = "live"        // libvirt block commit; autosnap removes the files
	modeLiveDelete = "live-delete" // libvirt block commit that deletes the merged files
	modeOffline    = "offline"     // qemu-img commit
)

const mergeRecordVersion = 1

// mergeRecord is the journal record of one snapshot delete in progress on one guest.
type mergeRecord struct {
	Version int    `json:"version"`
	Op      string `json:"op"` // "delete", or "collapse" (snapshot chain collapse)
	Guest   string `json:"guest"`
	UUID    string `json:"uuid"`
	// Started is when the plan was written.
	Started time.Time `json:"started"`
	// Deleted are the snapshots the delete removes, leaves first; External are those of
	// them with external data, whose metadata is forgotten once every step is done
	// (libvirt removed the internal ones before the plan was made).
	Deleted  []string          `json:"deleted"`
	External []string          `json:"external"`
	Steps    []mergeRecordStep `json:"steps"`
	// Replaced maps each image a done step merged away to the image that holds its
	// content now.
	Replaced map[string]string `json:"replaced"`
	// Memory are memory files of deleted snapshots, removed after the steps.
	Memory []string `json:"memory,omitempty"`
	// LastError says why the last run stopped, and LastErrorAt when.
	LastError   string    `json:"lastError,omitempty"`
	LastErrorAt time.Time `json:"lastErrorAt,omitzero"`
}

// mergeRecordStep is one mergeStep with its progress.
type mergeRecordStep struct {
	Kind      string   `json:"kind"` // "commit" or "remove"
	Disk      string   `json:"disk"`
	Base      string   `json:"base,omitempty"`
	Top       string   `json:"top"`
	Between   []string `json:"between,omitempty"`
	Above     []string `json:"above,omitempty"`
	ActiveTop bool     `json:"activeTop,omitempty"`
	// Live is the plan's choice; the executor decides again when the step runs.
	Live bool `json:"live,omitempty"`
	// InChain: top was in the disk's backing chain when planned; the step is done once
	// it has left the chain. Otherwise the images are files nothing has open, and the
	// step is done once top is gone.
	InChain bool `json:"inChain,omitempty"`
	// Touches are the deleted snapshots whose data the step changes: once it started,
	// they are partly merged.
	Touches   []string  `json:"touches,omitempty"`
	Status    string    `json:"status"`
	Mode      string    `json:"mode,omitempty"`
	StartedAt time.Time `json:"startedAt,omitzero"`
}

func (s *mergeRecordStep) commit() bool { return s.Kind == "commit" }

// removed lists the files the step deletes, top first: "top gone" then reliably
// means the step's merge completed.
func (s *mergeRecordStep) removed() []string {
	if !s.commit() {
		return []string{s.Top}
	}
	return append([]string{s.Top}, s.Between...)
}

// newMergeRecord records the plan steps of a delete of the snapshots external (leaves
// first; deleted are all the selected ones) on the guest. inChain holds, per disk, the
// images of the disk's chain before the plan.
func newMergeRecord(now time.Time, guest, uuid string, t *snapTree, deleted, external []string, steps []mergeStep, inChain map[string]map[string]bool) *mergeRecord {
	rec := &mergeRecord{Version: mergeRecordVersion, Op: "delete", Guest: guest, UUID: uuid, Started: now,
		Deleted: deleted, External: external, Replaced: map[string]string{}}
	for _, s := range steps {
		rs := recordStep(s, inChain[s.disk][s.top])
		files := map[string]bool{}
		for _, f := range s.removed() {
			files[f] = true
		}
		if s.kind == stepCommit {
			files[s.base] = true
		}
		for _, n := range external {
			m := t.byName[n]
			if m == nil {
				continue
			}
			if files[m.states[s.disk]] || files[m.overlays[s.disk]] {
				rs.Touches = append(rs.Touches, n)
			}
		}
		rec.Steps = append(rec.Steps, rs)
	}
	for _, n := range external {
		if m := t.byName[n]; m != nil && m.x.Memory != nil && m.x.Memory.Snapshot == "external" && m.x.Memory.File != "" {
			rec.Memory = append(rec.Memory, m.x.Memory.File)
		}
	}
	return rec
}

func recordStep(s mergeStep, inChain bool) mergeRecordStep {
	kind := "commit"
	if s.kind == stepRemove {
		kind = "remove"
	}
	return mergeRecordStep{Kind: kind, Disk: s.disk, Base: s.base, Top: s.top, Between: s.between, Above: s.above,
		ActiveTop: s.activeTop, Live: s.live, InChain: inChain, Status: stepPlanned}
}

// partlyMerged lists the deleted snapshots whose data a started step changed, in the
// order of Deleted.
func (r *mergeRecord) partlyMerged() []string {
	touched := map[string]bool{}
	for _, s := range r.Steps {
		if s.Status != stepPlanned {
			for _, n := range s.Touches {
				touched[n] = true
			}
		}
	}
	var out []string
	for _, n := range r.Deleted {
		if touched[n] {
			out = append(out, n)
		}
	}
	return out
}

// incomplete maps each partly merged snapshot to why it is not whole.
func (r *mergeRecord) incomplete() map[string]string {
	out := map[string]string{}
	for _, n := range r.partlyMerged() {
		out[n] = fmt.Sprintf("partly merged by an interrupted delete started %s; not to be reverted to; the next snap, clean or snapshot delete on this guest finishes removing it",
			r.Started.Local().Format(time.DateTime))
	}
	return out
}

// what names the operation, for messages.
func (r *mergeRecord) what() string {
	if r.Op == "collapse" {
		return "collapsing the disk chains"
	}
	return "deleting snapshot(s) " + strings.Join(r.Deleted, ", ")
}

// left describes what remains to be done, for messages.
func (r *mergeRecord) left() string {
	n := 0
	for _, s := range r.Steps {
		if s.Status != stepDone {
			n++
		}
	}
	if n == 0 {
		return "every merge step is done; the snapshot metadata is left to update"
	}
	return fmt.Sprintf("%d of %d merge steps left, then the snapshot metadata", n, len(r.Steps))
}

func mergeKey(node string, dom golibvirt.Domain) string {
	return "merge/" + node + "/" + formatUUID(dom.UUID)
}

// journalStore returns the journal under stateDir (like $AUTOSNAP_STATE_DIR, journals
// live in its "journal" directory), or the default one when stateDir is "".
func journalStore(stateDir string) *journal.Store {
	if stateDir == "" {
		return journal.Open("")
	}
	return journal.Open(filepath.Join(stateDir, "journal"))
}

func (d *Driver) store() *journal.Store {
	if d.journal == nil {
		return journal.Open("")
	}
	return d.journal
}

// loadMerge returns the merge record of dom, if there is one.
func (d *Driver) loadMerge(dom golibvirt.Domain) (*mergeRecord, string, error) {
	key := mergeKey(d.node, dom)
	var rec mergeRecord
	ok, err := d.store().Get(key, &rec)
	if err != nil || !ok {
		return nil, key, err
	}
	if rec.Version != mergeRecordVersion {
		return nil, key, fmt.Errorf("merge journal %s has version %d; this autosnap reads version %d (finish it with the autosnap that wrote it)", d.store().Path(key), rec.Version, mergeRecordVersion)
	}
	if rec.Replaced == nil {
		rec.Replaced = map[string]string{}
	}
	return &rec, key, nil
}

// settleMerge finishes the delete a record of an earlier run describes. It returns the
// snapshots that delete removed (nil when there was nothing to finish).
func (d *Driver) settleMerge(ctx context.Context, g driver.Guest, dom golibvirt.Domain, progress driver.ProgressFunc) ([]string, error) {
	rec, key, err := d.loadMerge(dom)
	if err != nil {
		return nil, fmt.Errorf("guest %s: %w", g.Name, err)
	}
	if rec == nil {
		return nil, nil
	}
	if err := d.execute(ctx, g, dom, key, rec, progress); err != nil {
		return nil, fmt.Errorf("guest %s: an interrupted run's merge had to be finished first, so nothing else was done: %w", g.Name, err)
	}
	return rec.Deleted, nil
}

// execute carries out the steps of rec that are not done and then the bookkeeping,
// saving rec under key as it goes and deleting it at the end. On an error it stops
// with every disk chain valid (a running block job is aborted), records the error and
// returns it with what is partly merged and what to do; the caller names the guest.
func (d *Driver) execute(ctx context.Context, g driver.Guest, dom golibvirt.Domain, key string, rec *mergeRecord, progress driver.ProgressFunc) error {
	save := func() error { return d.store().Put(key, rec) }
	mark := func(p string) { point(dom, p) }
	for i := range rec.Steps {
		s := &rec.Steps[i]
		if s.Status == stepDone {
			continue
		}
		if err := ctx.Err(); err != nil {
			return d.stopped(ctx, g, dom, key, rec, fmt.Errorf("interrupted: %w", err))
		}
		if err := d.execStep(ctx, dom, s, save, progress, mark); err != nil {
			return d.stopped(ctx, g, dom, key, rec, err)
		}
		mark(crash.MergeStepDone)
		s.Status = stepDone
		if s.commit() {
			for _, f := range s.removed() {
				rec.Replaced[f] = s.Base
			}
		}
		if err := save(); err != nil {
			return d.stopped(ctx, g, dom, key, rec, err)
		}
	}
	// The bookkeeping is quick and only touches metadata: it runs to its end even when
	// ctx was cancelled meanwhile, each call bounded by the timeout.
	bctx := context.WithoutCancel(ctx)
	mark(crash.MergeBeforeMetadata)
	t, err := d.loadTree(bctx, g, dom)
	if err != nil {
		return d.stoppedAfter(ctx, g, dom, key, rec, err)
	}
	gone := map[string]bool{}
	for _, n := range rec.External {
		gone[n] = true
	}
	if err := d.rewriteRemaining(bctx, g, dom, t, gone, rec.Replaced); err != nil {
		return d.stoppedAfter(ctx, g, dom, key, rec, err)
	}
	for _, f := range rec.Memory {
		// Missing is fine: the record says this delete removes it.
		if err := d.removeFile(f); err != nil && !errors.Is(err, errRemoteMissing) {
			return d.stoppedAfter(ctx, g, dom, key, rec, fmt.Errorf("removing memory file %s: %w", f, err))
		}
	}
	mark(crash.MergeBeforeForget)
	for _, n := range rec.External {
		if err := d.forget(bctx, g, dom, n); err != nil {
			return d.stoppedAfter(ctx, g, dom, key, rec, err)
		}
	}
	if err := d.store().Delete(key); err != nil {
		return fmt.Errorf("%s is complete, but its journal record could not be removed: %w (remove %s by hand)", rec.what(), err, d.store().Path(key))
	}
	return nil
}

// stopped handles an execute that could not go on during the steps. Before any step
// started nothing changed and the record goes; otherwise it stays, with the error,
// and the remaining snapshots' metadata is pointed at the files that exist.
func (d *Driver) stopped(ctx context.Context, g driver.Guest, dom golibvirt.Domain, key string, rec *mergeRecord, cause error) error {
	return d.stop(ctx, g, dom, key, rec, cause, false)
}

// stoppedAfter is stopped during the bookkeeping after the steps: metadata may have
// changed, so the record stays even when the plan had no step.
func (d *Driver) stoppedAfter(ctx context.Context, g driver.Guest, dom golibvirt.Domain, key string, rec *mergeRecord, cause error) error {
	return d.stop(ctx, g, dom, key, rec, cause, true)
}

func (d *Driver) stop(ctx context.Context, g driver.Guest, dom golibvirt.Domain, key string, rec *mergeRecord, cause error, bookkeeping bool) error {
	started := bookkeeping
	for _, s := range rec.Steps {
		started = started || s.Status != stepPlanned
	}
	if !started {
		if err := d.store().Delete(key); err != nil {
			cause = errors.Join(cause, err)
		}
		return fmt.Errorf("%s: %w (nothing was changed)", rec.what(), cause)
	}
	rec.LastError, rec.LastErrorAt = cause.Error(), time.Now()
	var extra []error
	if err := d.store().Put(key, rec); err != nil {
		extra = append(extra, err)
	}
	bctx := context.WithoutCancel(ctx)
	if t, err := d.loadTree(bctx, g, dom); err != nil {
		extra = append(extra, err)
	} else if err := d.rewriteRemaining(bctx, g, dom, t, nil, rec.Replaced); err != nil {
		extra = append(extra, err)
	}
	msg := "no snapshot's data was changed yet"
	if p := rec.partlyMerged(); len(p) > 0 {
		msg = "partly merged, not to be reverted to: " + strings.Join(p, ", ")
	}
	return fmt.Errorf("%s stopped: %w (every disk chain is valid and the guest's data intact; %s; %s; the next snap, clean or snapshot delete on this guest finishes it; to give up instead, check `autosnap snapshot chain` and remove %s)",
		rec.what(), errors.Join(append([]error{cause}, extra...)...), msg, rec.left(), d.store().Path(key))
}

// stepObs is what the executor sees of a step's disk before running it.
type stepObs struct {
	active     bool     // QEMU has the disk's chain open (running or paused guest)
	chain      []string // the disk's backing chain, active image first
	job        bool     // a block job runs on the disk
	jobType    golibvirt.DomainBlockJobType
	topExists  bool
	baseExists bool
	missing    []string // images between base and top that do not exist
}

type stepAction int

const (
	actRemove  stepAction = iota + 1 // delete the unused file top
	actLive                          // start a libvirt block commit
	actAdopt                         // wait for (and pivot) the block commit already running
	actOffline                       // qemu-img commit
	actFinish                        // the merge is complete: switch off-chain images, remove files
)

// nextAction decides how to run (or finish) step s given what is on the host now. A
// missing image is explained only by a started step whose merge completed.
func nextAction(s mergeRecordStep, o stepObs) (stepAction, error) {
	started := s.Status != stepPlanned
	if !s.commit() {
		switch {
		case o.topExists:
			return actRemove, nil
		case started:
			return actFinish, nil
		}
		return 0, fmt.Errorf("%s, which the delete was to remove, is gone although this delete never touched it; refusing to guess what happened to it", s.Top)
	}
	if !o.baseExists {
		return 0, fmt.Errorf("%s, the image the merge writes into, is gone", s.Base)
	}
	inChain := indexOf(o.chain, s.Top) >= 0
	if s.InChain {
		if o.job {
			if started && (o.jobType == golibvirt.DomainBlockJobTypeCommit || o.jobType == golibvirt.DomainBlockJobTypeActiveCommit) {
				return actAdopt, nil
			}
			return 0, fmt.Errorf("another block job runs on the disk (see: virsh blockjob <guest> %s); wait for it or abort it", s.Disk)
		}
		if !inChain {
			if started {
				return actFinish, nil
			}
			return 0, fmt.Errorf("%s left the disk's chain %v before this delete merged it; refusing to guess whether its data was merged", s.Top, o.chain)
		}
		if !o.topExists || len(o.missing) > 0 {
			return 0, fmt.Errorf("the disk's chain names %s, but file(s) %s are gone", s.Top, strings.Join(append(missingTop(o), o.missing...), ", "))
		}
		if o.active {
			return actLive, nil
		}
		return actOffline, nil
	}
	if inChain {
		return 0, fmt.Errorf("%s is in the disk's chain %v now, although it was not when the delete was planned; refusing to merge it offline", s.Top, o.chain)
	}
	if !o.topExists {
		if started {
			return actFinish, nil
		}
		return 0, fmt.Errorf("%s, which the delete was to merge, is gone although this delete never touched it; refusing to guess whether its data was merged", s.Top)
	}
	if len(o.missing) > 0 {
		return 0, fmt.Errorf("images between %s and %s are gone: %s", s.Base, s.Top, strings.Join(o.missing, ", "))
	}
	return actOffline, nil
}

func missingTop(o stepObs) []string {
	if o.topExists {
		return nil
	}
	return []string{"top"}
}

// observe reads the disk's chain, its block job and which of the step's images exist.
func (d *Driver) observe(ctx context.Context, dom golibvirt.Domain, s *mergeRecordStep) (stepObs, error) {
	var o stepObs
	// The job first: libvirt updates the chain and deletes merged files before it lets
	// go of a finished job, so once no job is seen, the chain and files read after are
	// those after the merge.
	j, jerr := d.jobInfo(ctx, dom, s.Disk)
	rctx, cancel := d.rpcCtx(ctx)
	defer cancel()
	x, active, err := d.currentXML(rctx, dom)
	if err != nil {
		return o, err
	}
	chains, err := d.chainsOf(rctx, x, active)
	if err != nil {
		return o, err
	}
	c, ok := chains[s.Disk]
	if !ok {
		return o, fmt.Errorf("the guest has no disk %s any more", s.Disk)
	}
	o.active, o.chain = active, c
	if active {
		if jerr != nil {
			return o, jerr // e.g. started meanwhile: the next run sees it steady
		}
		o.job, o.jobType = j.found, j.typ
	}
	o.topExists = d.exists(s.Top)
	o.baseExists = !s.commit() || d.exists(s.Base)
	for _, f := range s.Between {
		if !d.exists(f) {
			o.missing = append(o.missing, f)
		}
	}
	return o, nil
}

// execStep runs one step of a record (or finishes it), saving the record with save
// once the step is marked started, before its first irreversible action.
func (d *Driver) execStep(ctx context.Context, dom golibvirt.Domain, s *mergeRecordStep, save func() error, progress driver.ProgressFunc, mark func(string)) error {
	err := d.execStep1(ctx, dom, s, save, progress, mark)
	switch {
	case err == nil:
		return nil
	case s.commit():
		return fmt.Errorf("disk %s: merging %s into %s: %w", s.Disk, s.Top, s.Base, err)
	}
	return fmt.Errorf("disk %s: removing the unused image %s: %w", s.Disk, s.Top, err)
}

func (d *Driver) execStep1(ctx context.Context, dom golibvirt.Domain, s *mergeRecordStep, save func() error, progress driver.ProgressFunc, mark func(string)) error {
	o, err := d.observe(ctx, dom, s)
	if err != nil {
		return err
	}
	act, err := nextAction(*s, o)
	if err != nil {
		return err
	}
	top := indexOf(o.chain, s.Top) == 0
	deleteFiles := true // libvirt deletes top and between unless another branch builds on top
	for _, a := range s.Above {
		if indexOf(o.chain, a) < 0 {
			deleteFiles = false
		}
	}
	mode := s.Mode
	switch act {
	case actLive:
		mode = modeLive
		if deleteFiles {
			mode = modeLiveDelete
		}
	case actOffline:
		mode = modeOffline
	}
	if s.Status == stepPlanned || mode != s.Mode {
		if s.Status == stepPlanned {
			s.Status, s.StartedAt = stepStarted, time.Now()
		}
		s.Mode = mode
		if err := save(); err != nil {
			return err
		}
	}
	switch act {
	case actRemove:
		return d.removeFile(s.Top)
	case actLive, actAdopt:
		if err := d.commitLive(ctx, dom, s.Disk, s.Top, s.Base, top, deleteFiles, act == actAdopt, progress, mark); err != nil {
			return err
		}
	case actOffline:
		if err := d.commitOffline(ctx, dom, s, o.chain, progress, mark); err != nil {
			return err
		}
	case actFinish:
		if !s.commit() {
			return nil
		}
	}
	return d.finishCommit(ctx, dom, s)
}

// commitOffline merges top into base with qemu-img and takes top out of the disk's
// chain: the image above it is rebased onto base, or the domain definition is pointed
// at base when top was the active image.
func (d *Driver) commitOffline(ctx context.Context, dom golibvirt.Domain, s *mergeRecordStep, chain []string, progress driver.ProgressFunc, mark func(string)) error {
	if !d.local {
		return fmt.Errorf("merging images the guest does not have open needs autosnap on the guest's host (qemu:///system there), or start the guest first")
	}
	if err := carryBitmaps(ctx, s.Top, s.Base); err != nil {
		return err
	}
	// -b names where the data goes (and implies -d: top is deleted after, so emptying
	// it would be wasted writes); qemu-img refuses if base is not below top.
	err := runProgress(ctx, s.Disk, progress, d.timeout, func() { mark(crash.MergeOfflineCommit) },
		"qemu-img", "commit", "-p", "-f", "qcow2", "-b", s.Base, s.Top)
	if err != nil {
		return err
	}
	if !s.InChain {
		return nil
	}
	// The data is merged: taking top out of the chain is short and must not be cut off.
	ctx = context.WithoutCancel(ctx)
	switch i := indexOf(chain, s.Top); {
	case i > 0:
		return d.rebaseUnsafe(ctx, chain[i-1], s.Base)
	case i == 0:
		rctx, cancel := d.rpcCtx(ctx)
		defer cancel()
		fmtName, err := imageFormat(rctx, s.Base)
		if err != nil {
			return err
		}
		return d.repointDisk(rctx, dom, s.Disk, s.Base, fmtName)
	}
	return nil
}

// finishCommit completes a commit step whose merge is done: images of other branches
// that still build on top are rebased onto base, then top and the images between are
// removed, top first. It is short and runs to its end even when ctx was cancelled
// meanwhile (each call bounded by the timeout): the merge it completes is done.
func (d *Driver) finishCommit(ctx context.Context, dom golibvirt.Domain, s *mergeRecordStep) error {
	ctx = context.WithoutCancel(ctx)
	rctx, cancel := d.rpcCtx(ctx)
	chains, _, err := d.chains(rctx, dom)
	cancel()
	if err != nil {
		return err
	}
	for _, a := range s.Above {
		if indexOf(chains[s.Disk], a) >= 0 {
			continue // switched by QEMU or by commitOffline
		}
		if !d.exists(a) {
			return fmt.Errorf("%s, which builds on %s, is gone", a, s.Top)
		}
		if err := d.rebaseUnsafe(ctx, a, s.Base); err != nil {
			return err
		}
	}
	if s.Mode == modeLiveDelete && !d.local {
		return nil // libvirt deleted them; a remote pool may still list them until refreshed
	}
	for _, f := range s.removed() {
		// The step started, so a missing file is one this merge deleted (libvirt does
		// after a block commit).
		if err := d.removeFile(f); err != nil {
			return fmt.Errorf("removing merged image %s: %w", f, err)
		}
	}
	return nil
}

// rpcCtx bounds one call to the hypervisor (or one short command) by the connection
// timeout: merges run without an overall deadline (see StallBounded).
func (d *Driver) rpcCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	t := d.timeout
	if t <= 0 {
		t = 30 * time.Second
	}
	return context.WithTimeout(ctx, t)
}

// StallBounded implements driver.StallBounded: a merge gives up when its block job (or
// qemu-img) makes no progress for the connection timeout, and every single call to
// libvirt is bounded by it; the total time is bounded only by the caller's ctx.
func (d *Driver) StallBounded() bool { return true }

// stallWatch tells when a position (bytes copied) has not advanced for limit.
type stallWatch struct {
	limit time.Duration
	pos   uint64
	since time.Time
	seen  bool
}

// observe records the position at now and reports whether it has not changed for
// limit or longer. A limit of 0 never stalls.
func (w *stallWatch) observe(pos uint64, now time.Time) bool {
	if !w.seen || pos != w.pos {
		w.seen, w.pos, w.since = true, pos, now
		return false
	}
	return w.limit > 0 && now.Sub(w.since) >= w.limit
}

// reset counts the time from now, as after a change of phase (a pivot).
func (w *stallWatch) reset(now time.Time) { w.since = now }

// errStalled marks a merge given up because it made no progress.
var errStalled = errors.New("no progress")

// pointHooks maps a guest UUID to a function called at every crash point of a merge on
// that guest. Only tests set it (to stop a merge in-process at a chosen point).
var pointHooks sync.Map

// point marks a crash point of a merge on dom.
func point(dom golibvirt.Domain, name string) {
	crash.Point(name)
	if h, ok := pointHooks.Load(formatUUID(dom.UUID)); ok {
		h.(func(string))(name)
	}
}

// chainSets returns, per disk, the images of the disk's chain in each graph (the
// active image and its backing files).
func chainSets(graphs map[string]*diskGraph) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for disk, gr := range graphs {
		in := map[string]bool{}
		for f := gr.active; f != "" && !in[f]; {
			in[f] = true
			n, ok := gr.nodes[f]
			if !ok {
				break
			}
			f = n.backing
		}
		out[disk] = in
	}
	return out
}

var _ driver.StallBounded = (*Driver)(nil)
