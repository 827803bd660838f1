// Package history records every job the daemon (or a dashboard action) runs, and
// every guest within it, in an embedded pure-Go database, and answers queries for
// `autosnap history`, `monitor` and the dashboard.
package history

import (
	"context"
	"time"
)

// Kind is what a job does.
type Kind string

// Kinds.
const (
	KindSnapshot Kind = "snapshot"
	KindBackup   Kind = "backup"
	KindPrune    Kind = "prune"
	KindVerify   Kind = "verify"
)

// Outcome of a job or of one guest in it.
type Outcome string

// Outcomes.
const (
	Running Outcome = "running"
	OK      Outcome = "ok"
	Failed  Outcome = "failed"
	Skipped Outcome = "skipped"
	// Aborted: the daemon stopped (SIGTERM) or crashed before the job ended; a job
	// found Running when a store opens is marked Aborted.
	Aborted Outcome = "aborted"
)

// Job is one run of one policy.
type Job struct {
	ID     int64  `json:"id"`
	Policy string `json:"policy"`
	Kind   Kind   `json:"kind"`
	// Trigger is schedule, catch-up, manual or web.
	Trigger string `json:"trigger"`
	// DryRun jobs change nothing.
	DryRun  bool       `json:"dry_run"`
	Started time.Time  `json:"started"`
	Ended   time.Time  `json:"ended"` // zero while running
	Outcome Outcome    `json:"outcome"`
	Error   string     `json:"error"`
	Guests  []GuestRun `json:"guests"`
}

// GuestRun is what one job did to one guest.
type GuestRun struct {
	Host    string    `json:"host"`
	Guest   string    `json:"guest"`
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended"`
	Outcome Outcome   `json:"outcome"`
	Error   string    `json:"error"`
	// Created and Removed name the snapshots or backup points made and removed.
	Created []string `json:"created"`
	Removed []string `json:"removed"`
	// Bytes written by a backup.
	Bytes int64 `json:"bytes"`
	// Freeze is how long the guest's filesystems were frozen (0: not quiesced).
	Freeze time.Duration `json:"freeze_ns"`
}

// Recorder is what a job runner writes to. Implementations must be safe for
// concurrent use.
type Recorder interface {
	// Begin stores a new running job and returns its ID.
	Begin(ctx context.Context, j Job) (int64, error)
	// Guest appends one guest's result to job id.
	Guest(ctx context.Context, id int64, g GuestRun) error
	// End closes job id.
	End(ctx context.Context, id int64, outcome Outcome, errText string, ended time.Time) error
}

// Query selects jobs, newest first. Zero fields do not filter.
//
// When Guest or GuestMatch is set, a job is selected when at least one of its
// guests matches, and the job's Guests then hold only the matching guests' runs.
type Query struct {
	Policy string
	Guest  string
	// GuestMatch, when not nil, selects guests by host and name (e.g. a --vmid
	// selection); it is applied after Guest.
	GuestMatch func(host, guest string) bool `json:"-"`
	Kind       Kind
	Since      time.Time
	// Outcome filters on the job's outcome.
	Outcome Outcome
	Limit   int
}

// Reader answers queries.
type Reader interface {
	Jobs(ctx context.Context, q Query) ([]Job, error)
	Job(ctx context.Context, id int64) (Job, error)
}
