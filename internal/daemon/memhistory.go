package daemon

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/autosnap/autosnap/internal/history"
)

// MemoryHistory is a history.Recorder and history.Reader in memory: what the daemon
// uses when no history database is configured, and what tests inspect. Safe for
// concurrent use.
type MemoryHistory struct {
	mu   sync.Mutex
	jobs []history.Job // by ID-1
}

var (
	_ history.Recorder = (*MemoryHistory)(nil)
	_ history.Reader   = (*MemoryHistory)(nil)
)

// Begin implements history.Recorder.
func (m *MemoryHistory) Begin(_ context.Context, j history.Job) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j.ID = int64(len(m.jobs) + 1)
	j.Guests = nil
	m.jobs = append(m.jobs, j)
	return j.ID, nil
}

// Guest implements history.Recorder.
func (m *MemoryHistory) Guest(_ context.Context, id int64, g history.GuestRun) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if id < 1 || id > int64(len(m.jobs)) {
		return fmt.Errorf("history: no job %d", id)
	}
	m.jobs[id-1].Guests = append(m.jobs[id-1].Guests, g)
	return nil
}

// End implements history.Recorder.
func (m *MemoryHistory) End(_ context.Context, id int64, outcome history.Outcome, errText string, ended time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if id < 1 || id > int64(len(m.jobs)) {
		return fmt.Errorf("history: no job %d", id)
	}
	j := &m.jobs[id-1]
	j.Outcome, j.Error, j.Ended = outcome, errText, ended
	return nil
}

// Jobs implements history.Reader: newest first.
func (m *MemoryHistory) Jobs(_ context.Context, q history.Query) ([]history.Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []history.Job
	for i := len(m.jobs) - 1; i >= 0; i-- {
		j := m.jobs[i]
		if (q.Policy != "" && j.Policy != q.Policy) || (q.Kind != "" && j.Kind != q.Kind) ||
			(q.Outcome != "" && j.Outcome != q.Outcome) || (!q.Since.IsZero() && j.Started.Before(q.Since)) {
			continue
		}
		if q.Guest != "" && !slices.ContainsFunc(j.Guests, func(g history.GuestRun) bool { return g.Guest == q.Guest }) {
			continue
		}
		j.Guests = slices.Clone(j.Guests)
		out = append(out, j)
		if q.Limit > 0 && len(out) == q.Limit {
			break
		}
	}
	return out, nil
}

// Job implements history.Reader.
func (m *MemoryHistory) Job(_ context.Context, id int64) (history.Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if id < 1 || id > int64(len(m.jobs)) {
		return history.Job{}, fmt.Errorf("history: no job %d", id)
	}
	j := m.jobs[id-1]
	j.Guests = slices.Clone(j.Guests)
	return j, nil
}
