// Package monitor is `autosnap monitor`, a Nagios/Icinga plugin: it checks every
// policy's guests (newest snapshot and backup point against the policy's cadence,
// the last run's outcome, backing-chain depth) and reports one status with perfdata.
//
// Evaluate is pure (inputs and the clock in, status, lines and perfdata out);
// Collect gathers its inputs from the hypervisors, the backup repositories and the
// history database.
package monitor

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Status is a plugin status; its value is the plugin's exit status.
type Status int

// The Nagios plugin statuses.
const (
	OK       Status = 0
	Warning  Status = 1
	Critical Status = 2
	Unknown  Status = 3
)

func (s Status) String() string {
	switch s {
	case OK:
		return "OK"
	case Warning:
		return "WARNING"
	case Critical:
		return "CRITICAL"
	}
	return "UNKNOWN"
}

// severity orders statuses for "worst wins": CRITICAL > UNKNOWN > WARNING > OK, so
// an unreachable host never hides a guest known to be stale, and is never hidden
// by a mere warning.
func severity(s Status) int {
	return [...]int{OK: 0, Warning: 1, Unknown: 2, Critical: 3}[s]
}

func worse(a, b Status) Status {
	if severity(b) > severity(a) {
		return b
	}
	return a
}

// Thresholds are multiples of a policy's cadence, and the chain depth limit.
type Thresholds struct {
	// Warning and Critical: an item is WARNING when older than Warning × cadence,
	// CRITICAL when older than Critical × cadence (defaults 2 and 3).
	Warning, Critical float64
	// MaxChainDepth: a guest with a disk of more overlays is WARNING (0: off).
	MaxChainDepth int
}

// Defaults.
const (
	DefaultWarning  = 2.0
	DefaultCritical = 3.0
)

// Item is the newest snapshot or backup point of a guest under a policy.
type Item struct {
	// Cadence is the policy's schedule interval for it; 0: the policy does not take
	// this kind, the item is not checked.
	Cadence time.Duration
	// Newest is when the newest one was taken; zero: there is none.
	Newest time.Time
	// Name names it (snapshot name, backup point id), for the long output.
	Name string
}

// Guest is what is known about one guest under one policy.
type Guest struct {
	Policy, Host, Name string
	Snapshot, Backup   Item
	// ChainDepth is the most overlays on any of its disks (-1: unknown).
	ChainDepth int
	// Failed is the error of its last finished run when that run failed ("" when it
	// succeeded or there is no history); FailedKind says which kind of run.
	Failed     string
	FailedKind string
	// Notes are shown in its long output line (e.g. why a check was not made).
	Notes []string
}

// Input is everything Evaluate looks at.
type Input struct {
	Now        time.Time
	Thresholds Thresholds
	Guests     []Guest
	// Unknown are checks that could not be made, each saying which and why (a host
	// that is unreachable, a repository that cannot be read).
	Unknown []string
	// Empty are the policies that select no guest (WARNING: a mistyped vmid
	// protects nothing).
	Empty []string
}

// Result is the plugin's output.
type Result struct {
	Status Status
	// Summary is the status line without perfdata.
	Summary string
	// Perfdata is the performance data (space-separated label=value;warn;crit;min).
	Perfdata string
	// Long is the long output, one line per guest and per unknown check, problems
	// first.
	Long []string
}

// String is the whole plugin output: the status line with perfdata, then the long
// output.
func (r Result) String() string {
	var b strings.Builder
	b.WriteString(r.Summary)
	if r.Perfdata != "" {
		b.WriteString(" | ")
		b.WriteString(r.Perfdata)
	}
	b.WriteByte('\n')
	for _, l := range r.Long {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String()
}

// maxNamed is how many guests the status line names per problem; the rest are
// counted.
const maxNamed = 5

type finding struct {
	status Status
	text   string
}

type guestEval struct {
	g        Guest
	status   Status
	stale    []finding
	failed   *finding
	deep     *finding
	okDetail []string
}

// Evaluate turns inputs into the plugin's status, status line, perfdata and long
// output. It is pure: in.Now is the clock.
//
// Per guest: for its snapshots and its backups (when its policy takes them), no
// item at all is CRITICAL, an age past Critical × cadence is CRITICAL and past
// Warning × cadence WARNING; a failed last run is WARNING (staleness turns it
// CRITICAL if it persists); a chain deeper than MaxChainDepth is WARNING. Each
// unknown check is UNKNOWN, each policy that selects no guest WARNING. The worst
// wins, in the order CRITICAL, UNKNOWN, WARNING, OK.
func Evaluate(in Input) Result {
	th := in.Thresholds
	if th.Warning <= 0 {
		th.Warning = DefaultWarning
	}
	if th.Critical <= 0 {
		th.Critical = DefaultCritical
	}
	evals := make([]guestEval, len(in.Guests))
	var oldestSnap, oldestBackup struct {
		age, warn, crit time.Duration
		set             bool
	}
	for i, g := range in.Guests {
		e := guestEval{g: g}
		for _, it := range []struct {
			kind   string
			item   Item
			oldest *struct {
				age, warn, crit time.Duration
				set             bool
			}
		}{{"snapshot", g.Snapshot, &oldestSnap}, {"backup", g.Backup, &oldestBackup}} {
			if it.item.Cadence <= 0 {
				continue
			}
			cad := it.item.Cadence
			warn := time.Duration(float64(cad) * th.Warning)
			crit := time.Duration(float64(cad) * th.Critical)
			if it.item.Newest.IsZero() {
				e.stale = append(e.stale, finding{Critical, fmt.Sprintf("no %s, cadence %s", it.kind, Human(cad))})
				continue
			}
			age := max(in.Now.Sub(it.item.Newest), 0)
			if !it.oldest.set || age > it.oldest.age {
				it.oldest.age, it.oldest.warn, it.oldest.crit, it.oldest.set = age, warn, crit, true
			}
			switch {
			case age > crit:
				e.stale = append(e.stale, finding{Critical, fmt.Sprintf("%s %s old, cadence %s", it.kind, Human(age), Human(cad))})
			case age > warn:
				e.stale = append(e.stale, finding{Warning, fmt.Sprintf("%s %s old, cadence %s", it.kind, Human(age), Human(cad))})
			default:
				e.okDetail = append(e.okDetail, fmt.Sprintf("%s %s old, cadence %s", it.kind, Human(age), Human(cad)))
			}
		}
		if g.Failed != "" {
			kind := g.FailedKind
			if kind == "" {
				kind = "last"
			}
			e.failed = &finding{Warning, fmt.Sprintf("%s run failed: %s", kind, OneLine(g.Failed))}
		}
		if th.MaxChainDepth > 0 && g.ChainDepth > th.MaxChainDepth {
			e.deep = &finding{Warning, fmt.Sprintf("chain depth %d > %d", g.ChainDepth, th.MaxChainDepth)}
		}
		for _, f := range e.stale {
			e.status = worse(e.status, f.status)
		}
		if e.failed != nil {
			e.status = worse(e.status, e.failed.status)
		}
		if e.deep != nil {
			e.status = worse(e.status, e.deep.status)
		}
		evals[i] = e
	}
	slices.SortStableFunc(evals, func(a, b guestEval) int {
		if c := cmp.Compare(severity(b.status), severity(a.status)); c != 0 {
			return c
		}
		if c := cmp.Compare(a.g.Policy, b.g.Policy); c != 0 {
			return c
		}
		return cmp.Compare(a.g.Name, b.g.Name)
	})

	status := OK
	var stale, failed, deep []string
	nStale, nFailed, nDeep := 0, 0, 0
	var long []string
	for _, e := range evals {
		status = worse(status, e.status)
		if len(e.stale) > 0 {
			nStale++
			if len(stale) < maxNamed {
				var ts []string
				for _, f := range e.stale {
					ts = append(ts, f.text)
				}
				stale = append(stale, fmt.Sprintf("%s (%s)", e.g.Name, strings.Join(ts, "; ")))
			}
		}
		if e.failed != nil {
			nFailed++
			if len(failed) < maxNamed {
				failed = append(failed, fmt.Sprintf("%s (%s)", e.g.Name, e.failed.text))
			}
		}
		if e.deep != nil {
			nDeep++
			if len(deep) < maxNamed {
				deep = append(deep, fmt.Sprintf("%s (%s)", e.g.Name, e.deep.text))
			}
		}
		var parts []string
		for _, f := range e.stale {
			parts = append(parts, f.text)
		}
		if e.failed != nil {
			parts = append(parts, e.failed.text)
		}
		if e.deep != nil {
			parts = append(parts, e.deep.text)
		}
		parts = append(parts, e.okDetail...)
		parts = append(parts, e.g.Notes...)
		if len(parts) == 0 {
			parts = []string{"nothing scheduled to check"}
		}
		long = append(long, fmt.Sprintf("[%s] %s (policy %s, host %s): %s", e.status, e.g.Name, e.g.Policy, e.g.Host, strings.Join(parts, ", ")))
	}
	for i := len(in.Empty) - 1; i >= 0; i-- {
		status = worse(status, Warning)
		long = append([]string{"[WARNING] policy " + in.Empty[i] + " selects no guest"}, long...)
	}
	for _, u := range in.Unknown {
		status = worse(status, Unknown)
		long = append([]string{"[UNKNOWN] " + OneLine(u)}, long...)
	}

	n := len(in.Guests)
	var clauses []string
	if nStale > 0 {
		clauses = append(clauses, fmt.Sprintf("%d of %s stale: %s", nStale, plural(n, "guest"), named(stale, nStale)))
	}
	if nFailed > 0 {
		clauses = append(clauses, fmt.Sprintf("%d failed: %s", nFailed, named(failed, nFailed)))
	}
	if nDeep > 0 {
		clauses = append(clauses, fmt.Sprintf("%d with chains too deep: %s", nDeep, named(deep, nDeep)))
	}
	if len(in.Empty) > 0 {
		if len(in.Empty) == 1 {
			clauses = append(clauses, "policy "+in.Empty[0]+" selects no guest")
		} else {
			clauses = append(clauses, fmt.Sprintf("%d policies select no guest: %s", len(in.Empty), named(in.Empty[:min(len(in.Empty), maxNamed)], len(in.Empty))))
		}
	}
	if len(in.Unknown) > 0 {
		us := make([]string, 0, len(in.Unknown))
		for _, u := range in.Unknown[:min(len(in.Unknown), maxNamed)] {
			us = append(us, OneLine(u))
		}
		clauses = append(clauses, fmt.Sprintf("%s failed: %s", plural(len(in.Unknown), "check"), named(us, len(in.Unknown))))
	}
	if len(clauses) == 0 {
		if n == 0 {
			clauses = []string{"no policy to check"}
		} else {
			clauses = []string{fmt.Sprintf("%s, all snapshots and backups within their cadence", plural(n, "guest"))}
		}
	}
	perf := []string{
		fmt.Sprintf("guests=%d;;;0", n),
		fmt.Sprintf("stale=%d;;;0", nStale),
		fmt.Sprintf("failed=%d;;;0", nFailed),
		fmt.Sprintf("deep_chains=%d;;;0", nDeep),
		fmt.Sprintf("unknown=%d;;;0", len(in.Unknown)),
	}
	if oldestSnap.set {
		perf = append(perf, fmt.Sprintf("oldest_snapshot_age=%ds;%d;%d;0", secs(oldestSnap.age), secs(oldestSnap.warn), secs(oldestSnap.crit)))
	}
	if oldestBackup.set {
		perf = append(perf, fmt.Sprintf("oldest_backup_age=%ds;%d;%d;0", secs(oldestBackup.age), secs(oldestBackup.warn), secs(oldestBackup.crit)))
	}
	return Result{
		Status:   status,
		Summary:  "AUTOSNAP " + status.String() + " - " + strings.Join(clauses, "; "),
		Perfdata: strings.Join(perf, " "),
		Long:     long,
	}
}

func named(names []string, total int) string {
	s := strings.Join(names, ", ")
	if total > len(names) {
		s += fmt.Sprintf(" and %d more", total-len(names))
	}
	return s
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

func secs(d time.Duration) int64 { return int64(d / time.Second) }

// OneLine keeps a message on one line: the plugin's status line and each long
// output line must not break, and '|' would start perfdata.
func OneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	return strings.ReplaceAll(s, "|", "/")
}

// Human renders a duration briefly: 45s, 12m, 7h, 7h30m, 3d, 3d4h.
func Human(d time.Duration) string {
	d = d.Truncate(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		h, m := int(d/time.Hour), int(d%time.Hour/time.Minute)
		if m == 0 {
			return fmt.Sprintf("%dh", h)
		}
		return fmt.Sprintf("%dh%dm", h, m)
	}
	days, h := int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour)
	if h == 0 {
		return fmt.Sprintf("%dd", days)
	}
	return fmt.Sprintf("%dd%dh", days, h)
}
