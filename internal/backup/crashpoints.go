package backup

// Crash points of a backup (see internal/crash): each names the moment just after what
// it says happened.
const (
	// CrashBegun: the pending point exists, the job is not started.
	CrashBegun = "backup.begun"
	// CrashCopying: the job runs (its first progress report), the point is pending.
	CrashCopying = "backup.copying"
	// CrashCopied: the job finished and its checkpoint exists, the point is not
	// committed.
	CrashCopied = "backup.copied"
	// CrashCommitted: the point is complete, unneeded checkpoints are not yet removed.
	CrashCommitted = "backup.committed"
)
