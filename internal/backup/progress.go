package backup

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// Progress shows how far the backups have come.
type Progress interface {
	// Bar starts showing one backup.
	Bar(name string) Bar
	// Writer is where the run's text goes while bars are shown (on a terminal the
	// lines must go above the bars).
	Writer(out io.Writer) io.Writer
	// Wait ends the display once every bar is done.
	Wait()
}

// Bar is one backup's progress.
type Bar interface {
	// Update takes the bytes copied so far and the bytes to copy (a Backupper's
	// BackupRequest.Progress).
	Update(done, total uint64)
	// Done ends the bar.
	Done(ok bool)
}

// NewTerminalProgress draws an mpb bar per backup on out (a terminal).
func NewTerminalProgress(out io.Writer) Progress {
	return &termProgress{p: mpb.New(mpb.WithOutput(out), mpb.WithWidth(40), mpb.WithRefreshRate(200*time.Millisecond), mpb.WithAutoRefresh())}
}

type termProgress struct{ p *mpb.Progress }

func (t *termProgress) Writer(io.Writer) io.Writer { return t.p }
func (t *termProgress) Wait()                      { t.p.Wait() }

func (t *termProgress) Bar(name string) Bar {
	b := t.p.AddBar(0,
		mpb.PrependDecorators(decor.Name(name, decor.WCSyncSpaceR), decor.Counters(decor.SizeB1024(0), "% .1f / % .1f")),
		mpb.AppendDecorators(decor.Percentage(decor.WCSyncSpace), decor.AverageSpeed(decor.SizeB1024(0), " % .1f", decor.WCSyncSpace)),
	)
	return &termBar{b: b, start: time.Now()}
}

type termBar struct {
	mu    sync.Mutex
	b     *mpb.Bar
	start time.Time
}

func (t *termBar) Update(done, total uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if total > 0 {
		t.b.SetTotal(int64(total), false)
	}
	t.b.EwmaSetCurrent(int64(done), time.Since(t.start))
}

func (t *termBar) Done(ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if ok {
		t.b.SetTotal(-1, true)
		return
	}
	t.b.Abort(false)
}

// NewLineProgress prints a plain line per backup at every tenth of the way (and at
// most every interval otherwise), for logs and pipes.
func NewLineProgress(out io.Writer, interval time.Duration) Progress {
	return &lineProgress{out: out, interval: interval}
}

type lineProgress struct {
	mu       sync.Mutex
	out      io.Writer
	interval time.Duration
}

// Writer serialises the job's other output with the progress lines, which go to the
// same stream from the copy goroutines.
func (l *lineProgress) Writer(out io.Writer) io.Writer { return &lockedWriter{mu: &l.mu, w: out} }

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

func (l *lineProgress) Wait() {}

func (l *lineProgress) Bar(name string) Bar {
	return &lineBar{p: l, name: name, start: time.Now(), lastTenth: -1}
}

type lineBar struct {
	p         *lineProgress
	mu        sync.Mutex
	name      string
	start     time.Time
	last      time.Time
	lastTenth int
	done      uint64
}

func (b *lineBar) Update(done, total uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done = done
	tenth := 0
	if total > 0 {
		tenth = int(done * 10 / total)
	}
	if tenth == b.lastTenth && time.Since(b.last) < b.p.interval {
		return
	}
	b.lastTenth, b.last = tenth, time.Now()
	pct := ""
	if total > 0 {
		pct = fmt.Sprintf(" of %s (%d%%)", humanBytes(total), done*100/total)
	}
	b.p.mu.Lock()
	defer b.p.mu.Unlock()
	fmt.Fprintf(b.p.out, "progress %s: %s%s\n", b.name, humanBytes(done), pct)
}

func (b *lineBar) Done(ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	secs := time.Since(b.start).Seconds()
	what := "done"
	if !ok {
		what = "failed"
	}
	b.p.mu.Lock()
	defer b.p.mu.Unlock()
	fmt.Fprintf(b.p.out, "progress %s: %s, %s in %.1f s (%s/s)\n", b.name, what, humanBytes(b.done), secs, humanBytes(uint64(float64(b.done)/max(secs, 0.001))))
}
