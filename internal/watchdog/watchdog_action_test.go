package watchdog

import (
	"bufio"
	"io"
	"testing"
	"time"
)

func serveActions(t *testing.T, bound time.Duration, actions map[string]ThawFunc) (io.WriteCloser, *bufio.Scanner, chan struct{}) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = ServeActions(inR, outW, bound, actions, io.Discard)
		outW.Close()
	}()
	sc := bufio.NewScanner(outR)
	if !sc.Scan() || sc.Text() != "ready" {
		t.Fatalf("no ready line: %q", sc.Text())
	}
	return inW, sc, done
}

// TestEOFRunsEachGuardsAction: a guest armed for resume is resumed, not thawed, when
// the run dies; one armed without an action word is thawed as before.
func TestEOFRunsEachGuardsAction(t *testing.T) {
	thawed, resumed := &thawRecorder{}, &thawRecorder{}
	w, sc, done := serveActions(t, time.Minute, map[string]ThawFunc{ActionThaw: thawed.thaw, ActionResume: resumed.thaw})
	send(t, w, sc, "arm 1 node/a", "armed 1")
	send(t, w, sc, "arm 2 node/b resume", "armed 2")
	send(t, w, sc, "arm 3 node/c resume", "armed 3")
	send(t, w, sc, "disarm 3", "disarmed 3")
	w.Close()
	<-done
	if got := thawed.got(); len(got) != 1 || got[0] != "node/a" {
		t.Errorf("thawed %v, want node/a", got)
	}
	if got := resumed.got(); len(got) != 1 || got[0] != "node/b" {
		t.Errorf("resumed %v, want node/b", got)
	}
}

// TestUnknownActionGuardsNothing: a watchdog without the action says so and arms
// nothing, and the client reports an error rather than an id.
func TestUnknownActionGuardsNothing(t *testing.T) {
	r := &thawRecorder{}
	w, sc, done := serve(t, time.Minute, r)
	send(t, w, sc, "arm 1 node/a resume", "unknown 1")
	w.Close()
	<-done
	if got := r.got(); len(got) != 0 {
		t.Errorf("thawed %v for a guard it could not arm", got)
	}
}

// TestBoundRunsTheArmedAction: past the bound the resume action runs on its own.
func TestBoundRunsTheArmedAction(t *testing.T) {
	thawed, resumed := &thawRecorder{}, &thawRecorder{}
	w, sc, done := serveActions(t, 100*time.Millisecond, map[string]ThawFunc{ActionThaw: thawed.thaw, ActionResume: resumed.thaw})
	send(t, w, sc, "arm 4 node/x resume", "armed 4")
	for end := time.Now().Add(2 * time.Second); len(resumed.got()) == 0 && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	send(t, w, sc, "disarm 4", "fired 4")
	w.Close()
	<-done
	if got := resumed.got(); len(got) != 1 {
		t.Errorf("resumed %v, want node/x once", got)
	}
	if got := thawed.got(); len(got) != 0 {
		t.Errorf("thawed %v", got)
	}
}
