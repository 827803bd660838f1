package qmp

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Job is one entry of query-jobs with its progress.
type Job struct {
	ID     string `json:"id"`
	Type   string `json:"type"`
	Status string `json:"status"`
	// CurrentProgress and TotalProgress are in units of the job's type (bytes for a
	// backup); TotalProgress may grow while the job runs.
	CurrentProgress uint64 `json:"current-progress"`
	TotalProgress   uint64 `json:"total-progress"`
	Error           string `json:"error"`
}

// Jobs lists QEMU's jobs (query-jobs).
func (m *Monitor) Jobs(ctx context.Context) ([]Job, error) {
	var jobs []Job
	if err := m.Execute(ctx, "query-jobs", nil, &jobs); err != nil {
		return nil, err
	}
	return jobs, nil
}

// WaitJobs waits until every job named in ids has concluded and dismisses each; the
// jobs must have been started with auto-dismiss false, so that their outcome outlives
// them. progress, when not nil, is called with the sum of the jobs' progress whenever
// it changes. The result maps each failed job to its error. Events wake the wait, and
// query-jobs is asked at least every jobPoll, so a lost event only delays it.
//
// When ctx ends first, or query-jobs fails, the jobs still running are cancelled,
// waited for (at most 30 s) and dismissed, and the error is returned.
func (m *Monitor) WaitJobs(ctx context.Context, ids []string, progress func(done, total uint64)) (map[string]string, error) {
	events, unsubscribe := m.Subscribe()
	defer unsubscribe()
	tick := time.NewTicker(jobPoll)
	defer tick.Stop()
	failed := map[string]string{}
	left := slices.Clone(ids)
	var done, total uint64
	var lastDone, lastTotal uint64 = 1<<64 - 1, 0
	finished := map[string]Job{}
	for {
		jobs, err := m.Jobs(ctx)
		if err != nil {
			// The waiter gives up (ctx ended, which a write deadline may report
			// before ctx.Err does): its jobs must not run on without it.
			m.CancelJobs(left)
			return nil, fmt.Errorf("waiting for jobs %s: %w", strings.Join(left, ", "), err)
		}
		done, total = 0, 0
		for _, j := range finished {
			done += j.CurrentProgress
			total += j.TotalProgress
		}
		var still []string
		for _, id := range left {
			i := slices.IndexFunc(jobs, func(j Job) bool { return j.ID == id })
			if i < 0 {
				return nil, fmt.Errorf("job %s vanished before it concluded (dismissed by another client, or started with auto-dismiss)", id)
			}
			j := jobs[i]
			if j.Status != "concluded" {
				still = append(still, id)
				done += j.CurrentProgress
				total += j.TotalProgress
				continue
			}
			finished[id] = j
			done += j.CurrentProgress
			total += j.TotalProgress
			if j.Error != "" {
				failed[id] = j.Error
			}
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			derr := m.Execute(dctx, "job-dismiss", map[string]any{"id": id}, nil)
			cancel()
			if derr != nil {
				return nil, fmt.Errorf("job %s concluded but could not be dismissed: %w", id, derr)
			}
		}
		left = still
		if progress != nil && (done != lastDone || total != lastTotal) {
			progress(done, total)
			lastDone, lastTotal = done, total
		}
		if len(left) == 0 {
			return failed, nil
		}
		select {
		case <-ctx.Done():
			m.CancelJobs(left)
			return nil, fmt.Errorf("waiting for jobs %s: %w", strings.Join(left, ", "), ctx.Err())
		case <-m.done:
			return nil, fmt.Errorf("waiting for jobs %s: %w", strings.Join(left, ", "), ErrClosed)
		case <-events:
		case <-tick.C:
		}
	}
}

// CancelJobs cancels the jobs named in ids that still exist, waits (at most 30 s)
// until each has concluded and dismisses it, with a context of its own: it is what
// runs after the caller's context ended. It returns the jobs it could not remove.
func (m *Monitor) CancelJobs(ids []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cancelled := map[string]bool{}
	for {
		jobs, err := m.Jobs(ctx)
		if err != nil {
			return fmt.Errorf("cancelling jobs %s: %w", strings.Join(ids, ", "), err)
		}
		var left []string
		for _, j := range jobs {
			if !slices.Contains(ids, j.ID) {
				continue
			}
			switch j.Status {
			case "concluded":
				if err := m.Execute(ctx, "job-dismiss", map[string]any{"id": j.ID}, nil); err != nil {
					return fmt.Errorf("dismissing job %s: %w", j.ID, err)
				}
				continue
			case "null", "aborting", "waiting", "pending":
			default:
				if !cancelled[j.ID] {
					if err := m.Execute(ctx, "job-cancel", map[string]any{"id": j.ID}, nil); err != nil {
						return fmt.Errorf("cancelling job %s: %w", j.ID, err)
					}
					cancelled[j.ID] = true
				}
			}
			left = append(left, j.ID)
		}
		if len(left) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("jobs %s did not end within 30 s of being cancelled", strings.Join(left, ", "))
		case <-time.After(jobPoll):
		}
	}
}
