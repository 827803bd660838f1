package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/hook"
	"github.com/autosnap/autosnap/internal/report"
	"github.com/autosnap/autosnap/internal/selector"
)

// cvClusterReporter is what cv4pve mode prints about a Proxmox VE cluster: its version
// and every node's storages. The proxmox driver implements it.
type cvClusterReporter interface {
	HypervisorVersion(ctx context.Context) (string, error)
	ClusterStorages(ctx context.Context) ([]driver.ClusterStorage, error)
}

// cvAgentReporter tells whether a VM's configuration enables its guest agent, for
// cv4pve's advice to enable it. The proxmox driver implements it.
type cvAgentReporter interface {
	AgentEnabled(ctx context.Context, g driver.Guest) (bool, error)
}

// runJobCV4PVE is runJob in cv4pve mode: cv4pve-autosnap's header (values aligned at
// column 19), the `NOT FOUND` lines when nothing is selected, snap's storage table,
// the guests' lines as cvWriter rewrites them, and snap's `Total execution`. Guests
// are processed one at a time unless --max-parallel was given; a --vmid token that
// matches nothing is not an error (cv4pve ignores it).
func (g *GlobalOptions) runJobCV4PVE(ctx context.Context, job *engine.Job, action string, run func(*engine.Job, context.Context, []driver.Guest) (*engine.Report, error)) error {
	d, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer d.Close()
	out := g.stdout
	snap := action == "Snap"
	maxPerc := cvPercent(job.MaxPercStorage)
	if snap {
		version := ""
		if cr, ok := d.(cvClusterReporter); ok {
			vctx, cancel := context.WithTimeout(ctx, g.timeout())
			version, err = cr.HypervisorVersion(vctx)
			cancel()
			if err != nil {
				return err
			}
		}
		fmt.Fprintf(out, "ACTION Snap\nPVE Version:      %s\nVMs:              %s\nLabel:            %s\nKeep:             %d\nState:            %s\nOnly running:     %s\nTimeout:          %d sec.\nTimestamp format: %s\nMax %% Storage :   %s%%\n",
			version, g.VMID, job.Label, job.Keep, cvBool(job.Memory), cvBool(job.OnlyRunning), g.Timeout, g.TimestampFormat, maxPerc)
	} else {
		fmt.Fprintf(out, "ACTION Clean\nVMs:              %s\nLabel:            %s\nKeep:             %d\nTimeout:          %d sec.\nTimestamp format: %s\n",
			g.VMID, job.Label, job.Keep, g.Timeout, g.TimestampFormat)
	}
	start := g.clock() // cv4pve times the job from after its header
	w := &cvWriter{w: out, clean: !snap, maxPerc: maxPerc, now: g.compat.now}
	jobStart, jobEnd := hook.Env{Phase: hook.CleanJobStart}, hook.Env{Phase: hook.CleanJobEnd}
	if snap {
		jobStart = hook.Env{Phase: hook.SnapJobStart, VMState: job.Memory, State: true}
		jobEnd = hook.Env{Phase: hook.SnapJobEnd, VMState: job.Memory}
	}
	if job.Hooks != nil {
		// cv4pve runs every hook through bash, prints its return code before its
		// captured stdout and leaves its stderr on the terminal; its job-start phase
		// comes before the guests are selected, so the engine must not run it again.
		h := *job.Hooks
		h.CV4PVE, h.Stderr = true, &syncWriter{w: g.stderr}
		h.Frame = [2]string{cvHookBegin + "\n", cvHookEnd + "\n"}
		first := h
		h.Skip = []hook.Phase{hook.SnapJobStart, hook.CleanJobStart}
		job.Hooks = &h
		cvJobHook(ctx, &first, job, jobStart, w)
	}
	g.IgnoreMissing = true
	guests, err := g.selectGuests(ctx, d, false)
	if errors.Is(err, selector.ErrNoMatch) {
		// cv4pve goes on with no guest: its job-end phase (failed) and, for snap,
		// the total time follow the NOT FOUND lines.
		fmt.Fprintf(w, "----- VMs with '%s' NOT FOUND -----\n----- POSSIBLE PROBLEM PERMISSION 'VM.Audit' -----\n", g.VMID)
		if strings.Contains(g.VMID, "@pool-") {
			// cv4pve 2.1+: reading a pool needs Pool.Audit (Pool.Allocate up to PVE 8).
			fmt.Fprintln(w, "----- POSSIBLE PROBLEM PERMISSION 'Pool.Audit' (PVE 9+) / 'Pool.Allocate' (PVE 8 and earlier) -----")
		}
		jobEnd.Duration = g.clock().Sub(start)
		cvJobHook(ctx, job.Hooks, job, jobEnd, w)
		if ferr := w.Flush(); ferr != nil {
			return ferr
		}
		if snap {
			fmt.Fprintf(out, "Total execution %s\n", report.CV4PVETimeSpan(jobEnd.Duration))
		}
		return err
	}
	if err != nil {
		return err
	}
	if snap {
		if err := g.cvStorageTable(ctx, d, out, guests, job.MaxPercStorage); err != nil {
			return err
		}
		w.agentOff = g.cvAgentOff(ctx, d, guests, job.OnlyRunning)
	}
	if !g.compat.parallelSet {
		job.MaxParallel = 1
	}
	job.Driver, job.Out = d, w
	if job.Now == nil {
		job.Now = g.compat.now
	}
	if g.adjustJob != nil {
		g.adjustJob(job)
	}
	_, jobErr := run(job, ctx, guests)
	if err := w.Flush(); err != nil {
		return err
	}
	if snap {
		fmt.Fprintf(out, "Total execution %s\n", report.CV4PVETimeSpan(g.clock().Sub(start)))
	}
	return jobErr
}

// cvJobHook runs a job phase's hook as the engine does: not in a dry run, a failure
// other than an exit status (which the runner prints itself) is a warning, and a
// job-end phase runs also after the run was interrupted, so monitoring learns of it.
func cvJobHook(ctx context.Context, r *hook.Runner, job *engine.Job, env hook.Env, out io.Writer) {
	if r == nil || job.DryRun {
		return
	}
	env.Label, env.Keep, env.Debug = job.Label, job.Keep, job.Debug
	if env.Phase == hook.SnapJobEnd || env.Phase == hook.CleanJobEnd {
		ctx = context.WithoutCancel(ctx)
	}
	err := r.Run(ctx, env, out)
	var ee *hook.ExitError
	if err != nil && !errors.As(err, &ee) {
		fmt.Fprintf(out, "WARNING: %v\n", err)
	}
}

// syncWriter serialises writes of hooks that run at the same time (--max-parallel).
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// cvStorageTable prints cv4pve's storage table for the nodes of the guests: the
// storages that hold images or rootdir, by node then name, each Ok, Ko (fuller than
// --max-perc-storage) or n/a (size unknown); without any, cv4pve's permission hint.
func (g *GlobalOptions) cvStorageTable(ctx context.Context, d driver.Driver, out io.Writer, guests []driver.Guest, maxPerc float64) error {
	cr, ok := d.(cvClusterReporter)
	if !ok {
		return nil
	}
	sctx, cancel := context.WithTimeout(ctx, g.timeout())
	all, err := cr.ClusterStorages(sctx)
	cancel()
	if err != nil {
		return err
	}
	nodes := map[string]bool{}
	for _, gu := range guests {
		nodes[gu.Node] = true
	}
	var rows []report.CV4PVEStorageRow
	for _, s := range all {
		if !nodes[s.Node] || !slices.ContainsFunc(strings.Split(s.Content, ","), func(c string) bool { return c == "images" || c == "rootdir" }) {
			continue
		}
		r := report.CV4PVEStorageRow{Key: s.Node + "/" + s.Storage, Type: s.Type, Valid: "n/a", Size: s.MaxDisk, Usage: s.Disk}
		if s.MaxDisk > 0 {
			r.Used = float64(s.Disk) / float64(s.MaxDisk) * 100
			r.Valid = "Ok"
			if r.Used > maxPerc {
				r.Valid = "Ko"
			}
		}
		rows = append(rows, r)
	}
	if len(rows) == 0 {
		_, err := fmt.Fprintln(out, "----- POSSIBLE PROBLEM PERMISSION 'Datastore.Audit' -----")
		return err
	}
	slices.SortStableFunc(rows, func(a, b report.CV4PVEStorageRow) int { return strings.Compare(a.Key, b.Key) })
	return report.CV4PVEStorageTable(out, rows)
}

// cvAgentReads bounds the concurrent config reads of cvAgentOff.
const cvAgentReads = 8

// cvAgentOff returns the ids of the VMs among guests (those snap will take, not
// templates, running ones only with --only-running) whose agent option is off. The
// configurations are read a few at a time before the first guest starts; a guest whose
// configuration cannot be read gets no hint (the engine reports what fails for it).
func (g *GlobalOptions) cvAgentOff(ctx context.Context, d driver.Driver, guests []driver.Guest, onlyRunning bool) map[string]bool {
	ar, ok := d.(cvAgentReporter)
	if !ok {
		return nil
	}
	var (
		mu  sync.Mutex
		off = map[string]bool{}
		wg  sync.WaitGroup
		sem = make(chan struct{}, cvAgentReads)
	)
	for _, gu := range guests {
		if gu.Kind != driver.KindQEMU || gu.Template || gu.State == driver.StateUnknown || (onlyRunning && gu.State != driver.StateRunning) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			actx, cancel := context.WithTimeout(ctx, g.timeout())
			on, err := ar.AgentEnabled(actx, gu)
			cancel()
			if err == nil && !on {
				mu.Lock()
				off[engine.GuestID(gu)] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return off
}
