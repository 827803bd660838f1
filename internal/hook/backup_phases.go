package hook

// Phases of a backup run (autosnap only; cv4pve-autosnap has no backups). For one
// guest: backup-pre, then backup-post when the point is complete or backup-abort when
// it failed after backup-pre ran.
const (
	BackupPre   Phase = "backup-pre"
	BackupPost  Phase = "backup-post"
	BackupAbort Phase = "backup-abort"
)
