// Package policy reads and validates autosnap's policy file (YAML, by default
// /etc/autosnap/autosnap.yaml): connections, and policies that select guests and say
// when to snapshot and back them up and what to keep. It is pure: it never talks to a
// hypervisor. Load and Parse reject unknown keys, overlapping policies that would
// fight over one guest, and retention rules that keep nothing, naming the line.
package policy

import (
	"time"

	"github.com/autosnap/autosnap/internal/retention"
	"github.com/autosnap/autosnap/internal/schedule"
)

// DefaultPath is where the daemon, `policy`, `history` and `monitor` look for the file.
const DefaultPath = "/etc/autosnap/autosnap.yaml"

// Config is one parsed and validated policy file.
type Config struct {
	// Path is the file it was read from ("" when parsed from memory).
	Path string
	// Location is the time zone schedules and calendar retention use (`timezone:`,
	// default the host's local zone).
	Location *time.Location
	// StateDir holds the daemon's history database and locks (`state_dir:`, default
	// /var/lib/autosnap).
	StateDir    string
	Connections []Connection
	Policies    []Policy
	// Monitor holds the staleness thresholds of `autosnap monitor`.
	Monitor Monitor
	// Notify holds the failure/recovery webhook.
	Notify Notify
	// Dashboard configures the web dashboard (TLS, token, users).
	Dashboard Dashboard
}

// Connection is a named hypervisor connection, any --host value.
type Connection struct {
	Name string
	Host string // qemu:///system, pve://…, qmp:///dir …
	// User, and the secret as written (`file:/path`, `env:NAME`), resolved only when
	// connecting; never logged.
	User, Secret string
	// APIToken is a Proxmox VE API token reference (`api_token:`), `file:` or `env:`.
	APIToken string
	// Line is where the connection starts in the file, for messages.
	Line int
	// Fingerprint, CAFile and Insecure as the global flags of the same names.
	Fingerprint, CAFile string
	Insecure            bool
}

// Policy selects guests on one connection and schedules their snapshots and backups.
type Policy struct {
	Name string
	// Line is where the policy starts in the file, for messages.
	Line int
	// Host is a connection name or any --host value.
	Host string
	// VMID is the --vmid selection grammar.
	VMID string
	// Tags are free-form labels for filtering in `history` and the dashboard.
	Tags        []string
	Snapshot    *SnapshotRule // nil: no snapshots
	Backup      *BackupRule   // nil: no backups
	MaxParallel int
	Timeout     time.Duration
	// Script is a hook script run as --script runs it.
	Script string
}

// Schedule is a parsed `schedule:` value: a cron expression (5 fields, or 6 with
// seconds first) or `@every DURATION`, plus the descriptors @hourly, @daily, @weekly,
// @monthly, @yearly.
type Schedule struct {
	// Spec is the text as written.
	Spec string
	// Line is where the schedule is written (0 when built in code).
	Line int

	parsed schedule.Schedule
}

// Parsed returns the schedule parsed in the file's time zone, ready for Next, Due and
// Cadence. A Schedule built in code (not by Parse or Load) has its Spec parsed in
// time.Local; an invalid Spec then gives the zero schedule.Schedule, which must not
// be used.
func (s Schedule) Parsed() schedule.Schedule {
	if s.parsed.String() == "" && s.Spec != "" {
		ps, _ := schedule.Parse(s.Spec, nil)
		return ps
	}
	return s.parsed
}

// SnapshotRule is a policy's `snapshot:` section.
type SnapshotRule struct {
	Schedule Schedule
	// Label is the snapshot label; default the policy name.
	Label string
	Keep  retention.GFS
	// Quiesce is auto, on or off.
	Quiesce     string
	State       bool
	OnlyRunning bool
	// MaxChainDepth fails a guest whose chain would grow deeper (0: no limit).
	MaxChainDepth int
}

// BackupRule is a policy's `backup:` section.
type BackupRule struct {
	Schedule Schedule
	Target   string
	// Levels decides the level of each run: the first rule whose schedule is due wins,
	// else Default (auto when empty).
	Levels                     []LevelRule
	Default                    string
	Quiesce                    string
	Compress                   bool
	IncludeDisks, ExcludeDisks []string
	// Prune is applied after each successful backup when not zero.
	Prune retention.GFS
}

// LevelRule is one `levels:` entry, e.g. full every Sunday.
type LevelRule struct {
	Level    string // full, inc, diff, copy
	Schedule Schedule
}

// Monitor configures `autosnap monitor`: a guest is WARNING when its newest snapshot
// or backup is older than Warning × its policy's cadence, CRITICAL past Critical ×.
type Monitor struct {
	Warning, Critical float64 // defaults 2 and 3
	// MaxChainDepth raises WARNING for deeper chains (0: off).
	MaxChainDepth int
}

// Notify is the webhook the daemon POSTs JSON to on a failure and on recovery.
type Notify struct {
	Webhook string
	// Secret, when set, signs each body (HMAC-SHA256 in X-Autosnap-Signature); written
	// as `file:` or `env:`.
	Secret string
}
