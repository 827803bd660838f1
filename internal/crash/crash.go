// Package crash marks the points where the crash matrix (make crashtest) interrupts
// autosnap: before and after each irreversible step of a create, merge, revert or
// collapse. In the shipped binary Point does nothing and costs nothing; a binary built
// with -tags crashtest stops at the point named by the environment (see crashtest.go).
package crash

// Names of the crash points. Each names the moment just after what it says happened
// and before the next irreversible step.
const (
	FreezeFrozen        = "freeze.frozen"           // filesystems frozen, snapshot not yet asked for
	CreateDone          = "create.done"             // libvirt created the snapshot, autosnap has not recorded/chmodded yet
	MergeJournaled      = "merge.journaled"         // merge plan written to the journal, no step run
	MergeCommitStarted  = "merge.commit-started"    // a live block commit was started, not yet finished
	MergeCommitReady    = "merge.commit-ready"      // an active commit is ready, not yet pivoted
	MergeOfflineCommit  = "merge.offline-commit"    // qemu-img commit is running
	MergeStepDone       = "merge.step-done"         // one step's files changed, journal not yet updated
	MergeBeforeMetadata = "merge.before-metadata"   // every step done, snapshot metadata not yet rewritten
	MergeBeforeForget   = "merge.before-forget"     // metadata rewritten, deleted snapshots not yet forgotten
	RevertOverlays      = "revert.overlays-created" // new overlays exist, the domain still uses the old images
	RevertPointed       = "revert.pointed"          // the domain uses the new overlays, old images not yet dropped
	RevertBeforeCurrent = "revert.before-current"   // old images dropped, snapshot not yet marked current
	RevertBeforeMemory  = "revert.before-memory"    // disks reverted, RAM not yet restored
	CollapseStarted     = "collapse.started"        // a collapse commit was started
)
