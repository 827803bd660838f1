package web

import (
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/autosnap/autosnap/internal/history"
)

// point is one sample of a time series.
type point struct {
	T time.Time
	V float64
}

// bar is one bar of a bar chart.
type bar struct {
	Label string
	V     float64
	Class string // outcome or freshness class, styled by the stylesheet
}

const chartW, chartH, pad = 640.0, 200.0, 40.0

func esc(s string) string { return template.HTMLEscapeString(s) }

// lineChart draws a time series as an inline SVG. Only presentation attributes and
// classes are used: the CSP forbids inline style.
func lineChart(id, title string, pts []point, format func(float64) string) template.HTML {
	var b strings.Builder
	fmt.Fprintf(&b, `<svg id="%s" class="chart" viewBox="0 0 %g %g" role="img" aria-label="%s"><title>%s</title>`, esc(id), chartW, chartH, esc(title), esc(title))
	if len(pts) == 0 {
		fmt.Fprintf(&b, `<text x="%g" y="%g" class="empty">no data</text></svg>`, chartW/2-25, chartH/2)
		return template.HTML(b.String())
	}
	t0, t1 := pts[0].T, pts[len(pts)-1].T
	lo, hi := pts[0].V, pts[0].V
	for _, p := range pts {
		lo, hi = min(lo, p.V), max(hi, p.V)
	}
	if lo > 0 {
		lo = 0
	}
	if hi == lo {
		hi = lo + 1
	}
	span := t1.Sub(t0).Seconds()
	x := func(t time.Time) float64 {
		if span == 0 {
			return chartW / 2
		}
		return pad + (chartW-2*pad)*t.Sub(t0).Seconds()/span
	}
	y := func(v float64) float64 { return chartH - pad/2 - (chartH-pad)*(v-lo)/(hi-lo) }
	fmt.Fprintf(&b, `<line class="axis" x1="%g" y1="%g" x2="%g" y2="%g" stroke="currentColor"/>`, pad, y(lo), chartW-pad, y(lo))
	b.WriteString(`<polyline class="series" fill="none" stroke="currentColor" stroke-width="2" points="`)
	for i, p := range pts {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%.1f,%.1f", x(p.T), y(p.V))
	}
	b.WriteString(`"/>`)
	for _, p := range pts {
		fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="2.5" fill="currentColor"><title>%s: %s</title></circle>`, x(p.T), y(p.V), p.T.UTC().Format("2006-01-02 15:04"), esc(format(p.V)))
	}
	fmt.Fprintf(&b, `<text x="2" y="%g" class="lbl">%s</text><text x="2" y="%g" class="lbl">%s</text>`, y(hi)+4, esc(format(hi)), y(lo), esc(format(lo)))
	fmt.Fprintf(&b, `<text x="%g" y="%g" class="lbl">%s</text><text x="%g" y="%g" class="lbl" text-anchor="end">%s</text>`,
		pad, chartH-2, t0.UTC().Format("01-02 15:04"), chartW-pad, chartH-2, t1.UTC().Format("01-02 15:04"))
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// barChart draws bars left to right.
func barChart(id, title string, bars []bar, format func(float64) string) template.HTML {
	var b strings.Builder
	fmt.Fprintf(&b, `<svg id="%s" class="chart" viewBox="0 0 %g %g" role="img" aria-label="%s"><title>%s</title>`, esc(id), chartW, chartH, esc(title), esc(title))
	if len(bars) == 0 {
		fmt.Fprintf(&b, `<text x="%g" y="%g" class="empty">no data</text></svg>`, chartW/2-25, chartH/2)
		return template.HTML(b.String())
	}
	hi := 0.0
	for _, x := range bars {
		hi = max(hi, x.V)
	}
	if hi == 0 {
		hi = 1
	}
	w := min((chartW-2*pad)/float64(len(bars)), 40)
	for i, x := range bars {
		h := (chartH - pad) * x.V / hi
		fmt.Fprintf(&b, `<rect class="bar %s" x="%.1f" y="%.1f" width="%.1f" height="%.1f"><title>%s: %s</title></rect>`,
			esc(x.Class), pad+float64(i)*w+1, chartH-pad/2-h, max(w-2, 1), h, esc(x.Label), esc(format(x.V)))
	}
	fmt.Fprintf(&b, `<text x="2" y="%g" class="lbl">%s</text>`, pad/2+4, esc(format(hi)))
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// Charts stay small whatever the history's size.
const (
	maxPoints = 240
	maxBars   = 60
)

// downsample keeps at most n points of a series ordered by time: the last point of
// each of n equal time buckets, so the series still ends at its current value.
func downsample(pts []point, n int) []point {
	if len(pts) <= n {
		return pts
	}
	t0, span := pts[0].T, pts[len(pts)-1].T.Sub(pts[0].T)
	out := make([]point, 0, n)
	bucket := -1
	for _, p := range pts {
		b := int(float64(n-1) * float64(p.T.Sub(t0)) / float64(span))
		if b == bucket {
			out[len(out)-1] = p
			continue
		}
		bucket = b
		out = append(out, p)
	}
	return out
}

// chartSet is the charts page's data.
type chartSet struct {
	Snapshots, BackupBytes, Durations, Freezes template.HTML
	Days                                       int
	Policy, Guest                              string
}

// buildCharts derives the charts from the jobs (any order) ending in the window and
// the current snapshot total (so the series ends at today's count).
func buildCharts(jobs []history.Job, currentSnapshots int, guest string) chartSet {
	sort.Slice(jobs, func(i, j int) bool { return jobs[i].Started.Before(jobs[j].Started) })
	var cs chartSet
	var snaps, bytesPts []point
	var durs, freezes []bar
	net, cum := 0, 0.0
	for _, j := range jobs {
		if j.DryRun {
			continue
		}
		end := j.Ended
		if !end.IsZero() {
			durs = append(durs, bar{Label: fmt.Sprintf("job %d %s", j.ID, j.Policy), V: end.Sub(j.Started).Seconds(), Class: string(j.Outcome)})
		}
		n, by := 0, int64(0)
		for _, g := range j.Guests {
			if guest != "" && g.Guest != guest {
				continue
			}
			n += len(g.Created) - len(g.Removed)
			by += g.Bytes
		}
		if end.IsZero() {
			end = j.Started
		}
		switch j.Kind {
		case history.KindSnapshot:
			net += n
			snaps = append(snaps, point{T: end, V: float64(n)})
		case history.KindBackup:
			cum += float64(by)
			bytesPts = append(bytesPts, point{T: end, V: cum})
		}
	}
	// Freeze windows of the newest guest runs, newest last.
	for i := len(jobs) - 1; i >= 0 && len(freezes) < maxBars; i-- {
		j := jobs[i]
		for k := len(j.Guests) - 1; k >= 0 && len(freezes) < maxBars; k-- {
			g := j.Guests[k]
			if j.DryRun || g.Freeze <= 0 || (guest != "" && g.Guest != guest) {
				continue
			}
			freezes = append(freezes, bar{Label: g.Guest + " " + g.Started.UTC().Format("01-02 15:04"), V: float64(g.Freeze.Milliseconds()), Class: string(g.Outcome)})
		}
	}
	slices.Reverse(freezes)
	base := float64(currentSnapshots - net)
	for i := range snaps {
		base += snaps[i].V
		snaps[i].V = base
	}
	last := func(b []bar, n int) []bar {
		if len(b) > n {
			return b[len(b)-n:]
		}
		return b
	}
	count := func(v float64) string { return strconv.Itoa(int(v)) }
	cs.Snapshots = lineChart("chart-snapshots", "Snapshots over time", downsample(snaps, maxPoints), count)
	cs.BackupBytes = lineChart("chart-backup-bytes", "Backup bytes written (cumulative)", downsample(bytesPts, maxPoints), func(v float64) string { return humanBytes(uint64(v)) })
	cs.Durations = barChart("chart-durations", "Job durations", last(durs, maxBars), func(v float64) string {
		return (time.Duration(v * float64(time.Second))).Round(time.Second / 10).String()
	})
	cs.Freezes = barChart("chart-freezes", "Freeze windows", freezes, func(v float64) string { return (time.Duration(v) * time.Millisecond).String() })
	return cs
}

func (s *server) chartsPage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	days, err := strconv.Atoi(q.Get("days"))
	if err != nil || days <= 0 {
		days = 30
	}
	hq := history.Query{Policy: q.Get("policy"), Guest: q.Get("guest"), Since: s.o.Now().Add(-time.Duration(days) * 24 * time.Hour)}
	jobs, err := s.b.Jobs(r.Context(), hq)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	gs, err := s.b.Guests(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	total := 0
	for _, g := range gs {
		if (hq.Policy == "" || g.Policy == hq.Policy) && (hq.Guest == "" || g.Name == hq.Guest) {
			total += g.Snapshots
		}
	}
	cs := buildCharts(jobs, total, hq.Guest)
	cs.Days, cs.Policy, cs.Guest = days, hq.Policy, hq.Guest
	s.render(w, r, "charts", map[string]any{"Title": "Charts", "C": cs})
}
