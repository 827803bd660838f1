package engine

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
)

// With --max-parallel 1 guests are processed one after the other in selection order:
// every driver call for a guest comes before any call for the next one.
func TestMaxParallelOneFollowsSelectionOrder(t *testing.T) {
	var guests []driver.Guest
	for i := range 8 {
		guests = append(guests, running(fmt.Sprintf("g%d", i)))
	}
	for round := range 5 {
		h := newHarness(t, guests...)
		j := h.job("hourly", 2)
		j.MaxParallel = 1
		if _, err := h.snap(j); err != nil {
			t.Fatal(err)
		}
		var order []string
		for _, e := range h.f.Events() {
			g := strings.Fields(e)[1]
			if len(order) == 0 || order[len(order)-1] != g {
				order = append(order, g)
			}
		}
		want := []string{"g0", "g1", "g2", "g3", "g4", "g5", "g6", "g7"}
		if !slices.Equal(order, want) {
			t.Fatalf("round %d: guests processed in order %v, want %v (events %q)", round, order, want, h.f.Events())
		}
	}
}

// With --max-parallel N the guests start in selection order: whenever a guest has
// started, every guest before it has too, and a slot freed by a guest goes to the
// next guest in the selection.
func TestMaxParallelStartsInSelectionOrder(t *testing.T) {
	const n, par = 9, 3
	var guests []driver.Guest
	for i := range n {
		guests = append(guests, running(fmt.Sprintf("g%d", i)))
	}
	j := &Job{MaxParallel: par, Out: &strings.Builder{}}
	var mu sync.Mutex
	var started []string
	release := map[string]chan struct{}{}
	for _, g := range guests {
		release[g.Name] = make(chan struct{})
	}
	doneRun := make(chan struct{})
	go func() {
		defer close(doneRun)
		j.forEach(context.Background(), guests, func(ctx context.Context, gr *guestRun) {
			mu.Lock()
			started = append(started, gr.res.Guest.Name)
			mu.Unlock()
			<-release[gr.res.Guest.Name]
		})
	}()
	waitStarted := func(k int) []string {
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			s := slices.Clone(started)
			mu.Unlock()
			if len(s) >= k {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("only %v started, waiting for %d", s, k)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	for k := par; k <= n; k++ {
		s := waitStarted(k)
		// Give a wrongly scheduled guest the chance to start too.
		time.Sleep(20 * time.Millisecond)
		mu.Lock()
		s = slices.Clone(started)
		mu.Unlock()
		var want []string
		for i := range k {
			want = append(want, guests[i].Name)
		}
		got := slices.Clone(s)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("started %v, want exactly the first %d guests %v", s, k, want)
		}
		// Free the slot of the oldest running guest: the next in selection order starts.
		close(release[guests[k-par].Name])
	}
	for i := n - par + 1; i < n; i++ {
		close(release[guests[i].Name])
	}
	<-doneRun
}

// Guests not yet started when the run is interrupted are not started: they fail as
// "interrupted before start", in selection order after the running guest's output.
func TestInterruptedGuestsAreNotStarted(t *testing.T) {
	var guests []driver.Guest
	for i := range 4 {
		guests = append(guests, running(fmt.Sprintf("g%d", i)))
	}
	var out strings.Builder
	j := &Job{MaxParallel: 1, Out: &out}
	ctx, cancel := context.WithCancel(context.Background())
	var ran []string
	results := j.forEach(ctx, guests, func(ctx context.Context, gr *guestRun) {
		ran = append(ran, gr.res.Guest.Name)
		cancel()
	})
	if !slices.Equal(ran, []string{"g0"}) {
		t.Errorf("guests started: %v, want only g0", ran)
	}
	for i, r := range results {
		if i == 0 {
			if r.Outcome != OutcomeOK {
				t.Errorf("g0: %s", r.Outcome)
			}
			continue
		}
		if r.Outcome != OutcomeFailed || r.Reason != "interrupted before start" {
			t.Errorf("%s: %s %q", r.Guest.Name, r.Outcome, r.Reason)
		}
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := []string{"----- VM g1: not started, the run was interrupted -----", "----- VM g2: not started, the run was interrupted -----", "----- VM g3: not started, the run was interrupted -----"}
	if len(lines) != 5 || !slices.Equal(lines[2:], want) || !strings.HasPrefix(lines[0], "----- VM g0 ") {
		t.Errorf("output:\n%s", out.String())
	}
}
