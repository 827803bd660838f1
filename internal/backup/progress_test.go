package backup

import (
	"strings"
	"testing"
	"time"
)

func TestLineProgress(t *testing.T) {
	var out syncBuffer
	p := NewLineProgress(&out, time.Hour)
	b := p.Bar("vm1 full")
	for i := uint64(0); i <= 100; i += 5 {
		b.Update(i<<20, 100<<20)
	}
	b.Done(true)
	p.Wait()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	// One line per tenth reached (0%…100%: 11) and the summary.
	if len(lines) != 12 || !strings.Contains(lines[5], "50.0 MiB of 100.0 MiB (50%)") || !strings.Contains(lines[11], "vm1 full: done, 100.0 MiB in") {
		t.Fatalf("lines:\n%s", out.String())
	}
}

// TestTerminalProgress: the bars draw, text written meanwhile comes out, and Wait
// returns once the bars are done (also a failed one).
func TestTerminalProgress(t *testing.T) {
	var out syncBuffer
	p := NewTerminalProgress(&out)
	w := p.Writer(nil)
	a, b := p.Bar("vm1 full"), p.Bar("vm2 inc")
	a.Update(10<<20, 20<<20)
	w.Write([]byte("----- VM vm1 -----\n"))
	a.Update(20<<20, 20<<20)
	a.Done(true)
	b.Done(false)
	done := make(chan struct{})
	go func() { p.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return")
	}
	s := out.String()
	if !strings.Contains(s, "vm1 full") || !strings.Contains(s, "----- VM vm1 -----") {
		t.Fatalf("output:\n%q", s)
	}
}
