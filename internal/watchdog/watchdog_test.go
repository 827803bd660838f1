package watchdog

import (
	"bufio"
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

// thawRecorder records thaws; the real thaw is exercised end to end in internal/cli.
type thawRecorder struct {
	mu    sync.Mutex
	keys  []string
	times []time.Time
}

func (r *thawRecorder) thaw(_ context.Context, key string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.keys = append(r.keys, key)
	r.times = append(r.times, time.Now())
	return nil
}

func (r *thawRecorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.keys...)
}

func serve(t *testing.T, bound time.Duration, r *thawRecorder) (io.WriteCloser, *bufio.Scanner, chan struct{}) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = Serve(inR, outW, bound, r.thaw, io.Discard)
		outW.Close()
	}()
	sc := bufio.NewScanner(outR)
	if !sc.Scan() || sc.Text() != "ready" {
		t.Fatalf("no ready line: %q", sc.Text())
	}
	return inW, sc, done
}

func send(t *testing.T, w io.Writer, sc *bufio.Scanner, line, want string) {
	t.Helper()
	if _, err := io.WriteString(w, line+"\n"); err != nil {
		t.Fatal(err)
	}
	if !sc.Scan() || sc.Text() != want {
		t.Fatalf("%q → %q, want %q", line, sc.Text(), want)
	}
}

func TestDisarmedGuestIsNotThawed(t *testing.T) {
	r := &thawRecorder{}
	w, sc, done := serve(t, time.Minute, r)
	send(t, w, sc, "arm 1 node/a", "armed 1")
	send(t, w, sc, "disarm 1", "disarmed 1")
	w.Close()
	<-done
	if got := r.got(); len(got) != 0 {
		t.Errorf("thawed %v", got)
	}
}

func TestEOFThawsEveryArmedGuest(t *testing.T) {
	r := &thawRecorder{}
	w, sc, done := serve(t, time.Minute, r)
	send(t, w, sc, "arm 1 node/a", "armed 1")
	send(t, w, sc, "arm 2 node/b", "armed 2")
	send(t, w, sc, "arm 3 node/c", "armed 3")
	send(t, w, sc, "disarm 2", "disarmed 2")
	start := time.Now()
	w.Close() // the run died
	<-done
	got := r.got()
	if strings.Join(sortStrings(got), ",") != "node/a,node/c" {
		t.Errorf("thawed %v, want node/a and node/c", got)
	}
	if time.Since(start) > time.Second {
		t.Errorf("thaw after EOF took %s", time.Since(start))
	}
}

func TestBoundThawsAHungRun(t *testing.T) {
	r := &thawRecorder{}
	w, sc, done := serve(t, 200*time.Millisecond, r)
	armed := time.Now()
	send(t, w, sc, "arm 7 node/x", "armed 7")
	for end := time.Now().Add(2 * time.Second); len(r.got()) == 0 && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	if got := r.got(); len(got) != 1 || got[0] != "node/x" {
		t.Fatalf("after the bound: thawed %v", got)
	}
	if el := r.times[0].Sub(armed); el < 200*time.Millisecond || el > time.Second {
		t.Errorf("thawed after %s, want about the 200ms bound", el)
	}
	send(t, w, sc, "disarm 7", "fired 7")
	w.Close()
	<-done
	if n := len(r.got()); n != 1 {
		t.Errorf("thawed %d times, want once", n)
	}
}

func sortStrings(s []string) []string {
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s
}
