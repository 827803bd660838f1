package qmp

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// jobSim is a fake QEMU job table: each query-jobs advances every running job by
// step until its total, then it concludes (with err, if set); job-dismiss removes a
// concluded job and job-cancel concludes a job with "cancelled".
type jobSim struct {
	mu        sync.Mutex
	jobs      []Job
	step      uint64
	errs      map[string]string
	dismissed []string
	cancelled []string
	advance   bool
}

func (s *jobSim) answer(c cmd) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ok := fmt.Sprintf(`{"return": {}, "id": %q}`, c.ID)
	var args struct {
		ID string `json:"id"`
	}
	json.Unmarshal(c.Arguments, &args)
	switch c.Execute {
	case "query-jobs":
		for i := range s.jobs {
			j := &s.jobs[i]
			if j.Status != "running" || !s.advance {
				continue
			}
			j.CurrentProgress = min(j.CurrentProgress+s.step, j.TotalProgress)
			if j.CurrentProgress == j.TotalProgress {
				j.Status, j.Error = "concluded", s.errs[j.ID]
			}
		}
		b, _ := json.Marshal(s.jobs)
		return []string{
			`{"event": "JOB_STATUS_CHANGE", "data": {"id": "x", "status": "running"}, "timestamp": {"seconds": 1, "microseconds": 0}}`,
			fmt.Sprintf(`{"return": %s, "id": %q}`, b, c.ID),
		}
	case "job-dismiss":
		i := slices.IndexFunc(s.jobs, func(j Job) bool { return j.ID == args.ID })
		if i < 0 || s.jobs[i].Status != "concluded" {
			return []string{fmt.Sprintf(`{"error": {"class": "GenericError", "desc": "job %s not concluded"}, "id": %q}`, args.ID, c.ID)}
		}
		s.jobs = slices.Delete(s.jobs, i, i+1)
		s.dismissed = append(s.dismissed, args.ID)
		return []string{ok}
	case "job-cancel":
		for i := range s.jobs {
			if s.jobs[i].ID == args.ID {
				s.jobs[i].Status, s.jobs[i].Error = "concluded", "cancelled"
			}
		}
		s.cancelled = append(s.cancelled, args.ID)
		return []string{ok}
	}
	return []string{fmt.Sprintf(`{"error": {"class": "CommandNotFound", "desc": "%s"}, "id": %q}`, c.Execute, c.ID)}
}

// TestWaitJobsSumsProgressAndDismisses: two jobs' progress is reported summed and
// never backwards, the failed one's error is returned by id, and both are dismissed;
// a job of someone else's is left alone.
func TestWaitJobsSumsProgressAndDismisses(t *testing.T) {
	sim := &jobSim{step: 40, advance: true, errs: map[string]string{"b": "No space left on device"}, jobs: []Job{
		{ID: "a", Type: "backup", Status: "running", TotalProgress: 100},
		{ID: "b", Type: "backup", Status: "running", TotalProgress: 200},
		{ID: "other", Type: "mirror", Status: "ready", TotalProgress: 5},
	}}
	m, err := Dial(ctxT(t, 5*time.Second), qmpServer(t, sim.answer))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var seen [][2]uint64
	failed, err := m.WaitJobs(ctxT(t, 10*time.Second), []string{"a", "b"}, func(done, total uint64) { seen = append(seen, [2]uint64{done, total}) })
	if err != nil {
		t.Fatal(err)
	}
	if len(failed) != 1 || failed["b"] != "No space left on device" {
		t.Errorf("failed jobs %v, want b's error only", failed)
	}
	if last := seen[len(seen)-1]; last != [2]uint64{300, 300} {
		t.Errorf("last progress %v, want 300 of 300 (all: %v)", last, seen)
	}
	for i := 1; i < len(seen); i++ {
		if seen[i][0] < seen[i-1][0] {
			t.Errorf("progress went backwards: %v", seen)
		}
	}
	sim.mu.Lock()
	defer sim.mu.Unlock()
	slices.Sort(sim.dismissed)
	if !slices.Equal(sim.dismissed, []string{"a", "b"}) || len(sim.jobs) != 1 || sim.jobs[0].ID != "other" {
		t.Errorf("dismissed %v, left %+v", sim.dismissed, sim.jobs)
	}
}

// TestWaitJobsCancelsOnContextEnd: jobs still running when the caller's context ends
// are cancelled and dismissed, and the context's error is returned.
func TestWaitJobsCancelsOnContextEnd(t *testing.T) {
	sim := &jobSim{jobs: []Job{{ID: "a", Type: "backup", Status: "running", TotalProgress: 100}}}
	m, err := Dial(ctxT(t, 5*time.Second), qmpServer(t, sim.answer))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = m.WaitJobs(ctx, []string{"a"}, nil)
	if err == nil {
		t.Fatalf("WaitJobs on a job that never ends: %v", err)
	}
	sim.mu.Lock()
	defer sim.mu.Unlock()
	if !slices.Equal(sim.cancelled, []string{"a"}) || !slices.Equal(sim.dismissed, []string{"a"}) || len(sim.jobs) != 0 {
		t.Errorf("cancelled %v, dismissed %v, left %+v", sim.cancelled, sim.dismissed, sim.jobs)
	}
}

// TestWaitJobsVanished: a job dismissed behind the waiter's back is an error, not a
// success.
func TestWaitJobsVanished(t *testing.T) {
	sim := &jobSim{}
	m, err := Dial(ctxT(t, 5*time.Second), qmpServer(t, sim.answer))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.WaitJobs(ctxT(t, 5*time.Second), []string{"gone"}, nil); err == nil {
		t.Fatal("WaitJobs on a job that does not exist succeeded")
	}
}
