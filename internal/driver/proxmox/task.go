package proxmox

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/retry"
)

// upid is a parsed task id: UPID:node:pid:pstart:starttime:type:id:user:
type upid struct {
	raw, node, typ, id, user string
	start                    time.Time
}

func parseUPID(s string) (upid, error) {
	f := strings.Split(s, ":")
	if len(f) < 8 || f[0] != "UPID" || f[1] == "" {
		return upid{}, fmt.Errorf("unexpected task id %q", s)
	}
	u := upid{raw: s, node: f[1], typ: f[5], id: f[6], user: f[7]}
	if sec, err := strconv.ParseInt(f[4], 16, 64); err == nil {
		u.start = time.Unix(sec, 0)
	}
	return u, nil
}

// taskError is a task that ended with an exit status other than success.
type taskError struct {
	task upid
	exit string
}

func (e *taskError) Error() string {
	return fmt.Sprintf("Proxmox VE task %s on node %s failed: %s", e.task.typ, e.task.node, e.exit)
}

var warningsExit = regexp.MustCompile(`^WARNINGS: \d+$`)

// taskSucceeded is PVE's own test: "OK", or "WARNINGS: N" for a task that logged
// warnings but did its job.
func taskSucceeded(exit string) bool { return exit == "OK" || warningsExit.MatchString(exit) }

// wait polls the task until it ends or ctx ends. A task still running when ctx ends
// gives an error saying that PVE carries on with it.
func (d *Driver) wait(ctx context.Context, u upid) error {
	d.seenMu.Lock()
	if d.seen == nil {
		d.seen = map[string]bool{}
	}
	d.seen[u.raw] = true
	d.seenMu.Unlock()
	start := time.Now()
	polls := 0
	var lastErr error
	path := "/nodes/" + url.PathEscape(u.node) + "/tasks/" + url.PathEscape(u.raw) + "/status"
	for {
		var st struct {
			Status     string `json:"status"`
			ExitStatus string `json:"exitstatus"`
		}
		err := d.c.get(ctx, path, nil, &st)
		var ae *apiError
		switch {
		case ctx.Err() != nil:
			return d.stillRunning(ctx, u, start, lastErr)
		case errors.As(err, &ae) && ae.transient():
			// The task's node is unreachable for now; the task goes on regardless.
			lastErr = err
		case err != nil:
			return fmt.Errorf("following task %s on node %s: %w", u.typ, u.node, err)
		case st.Status != "running":
			if taskSucceeded(st.ExitStatus) {
				return nil
			}
			return &taskError{task: u, exit: st.ExitStatus}
		default:
			lastErr = nil
		}
		if retry.Sleep(ctx, taskPoll.Delay(polls)) != nil {
			return d.stillRunning(ctx, u, start, lastErr)
		}
		polls++
	}
}

// taskPoll paces task status polls: PVE tasks take from a fraction of a second to
// minutes, and each poll is an HTTP request to the cluster, so the policy's 100 ms
// ceiling is raised to 1 s.
var taskPoll = retry.Backoff{Initial: 50 * time.Millisecond, Max: time.Second, Factor: 1.5}

func (d *Driver) stillRunning(ctx context.Context, u upid, since time.Time, unreachable error) error {
	if unreachable != nil {
		return fmt.Errorf("cannot follow Proxmox VE task %s: node %s stayed unreachable for %s (%v); PVE continues the task if the node runs, and its result will show on the next run: %w",
			u.typ, u.node, time.Since(since).Round(100*time.Millisecond), unreachable, ctx.Err())
	}
	return fmt.Errorf("Proxmox VE task %s on node %s was still running after %s; PVE continues it in the background (see its log under %s) and its result will show on the next run; raise --timeout to wait longer: %w",
		u.typ, u.node, time.Since(since).Round(100*time.Millisecond), u.raw, ctx.Err())
}

// findTask looks for a task of typ on the guest started at or after since by this
// client's user: the trace of a write whose answer was lost when a host died. It
// returns the newest one, or ok=false.
func (d *Driver) findTask(ctx context.Context, g driver.Guest, typ string, since time.Time) (upid, bool, error) {
	var list []struct {
		UPID      string `json:"upid"`
		StartTime pveInt `json:"starttime"`
		User      string `json:"user"`
		TokenID   string `json:"tokenid"`
	}
	// The client's and the node's clocks may differ by a little.
	q := url.Values{"vmid": {strconv.Itoa(g.ID)}, "typefilter": {typ}, "source": {"all"}, "limit": {"50"},
		"since": {strconv.FormatInt(since.Add(-time.Minute).Unix(), 10)}}
	if err := d.c.get(ctx, "/nodes/"+url.PathEscape(g.Node)+"/tasks", q, &list); err != nil {
		return upid{}, false, err
	}
	var best upid
	found := false
	for _, t := range list {
		u, err := parseUPID(t.UPID)
		if err != nil || u.typ != typ || u.id != strconv.Itoa(g.ID) || !d.ownTask(u.user) {
			continue
		}
		// Only a task started by this very request: retention issues writes back to
		// back, so an older one of the same type is the previous write's. PVE's task
		// start time has second resolution; allow that plus a little clock skew.
		if u.start.Before(since.Add(-2*time.Second)) || d.waited(u) {
			continue
		}
		if !found || u.start.After(best.start) {
			best, found = u, true
		}
	}
	return best, found, nil
}

// waited reports whether this driver already waited on the task u.
func (d *Driver) waited(u upid) bool {
	d.seenMu.Lock()
	defer d.seenMu.Unlock()
	return d.seen[u.raw]
}

// ownTask reports whether a UPID's user field is this client's user or token.
func (d *Driver) ownTask(user string) bool {
	if d.c.tokenID != "" {
		return user == d.c.tokenID
	}
	return user == d.c.user
}

// lockMsg matches PVE's refusal to touch a locked guest.
var lockMsg = regexp.MustCompile(`(?:VM|CT) is locked \(([^)]+)\)`)

// lockedError is a guest lock seen in the config or in a task's exit status.
type lockedError struct{ lock string }

func (e *lockedError) Error() string { return "locked (" + e.lock + ")" }

// lockOf returns the lock that made err happen, if any.
func lockOf(err error) (string, bool) {
	var le *lockedError
	if errors.As(err, &le) {
		return le.lock, true
	}
	var msg string
	var te *taskError
	var ae *apiError
	switch {
	case errors.As(err, &te):
		msg = te.exit
	case errors.As(err, &ae):
		msg = ae.Msg
	default:
		return "", false
	}
	if m := lockMsg.FindStringSubmatch(msg); m != nil {
		return m[1], true
	}
	if strings.Contains(msg, "can't lock file") || strings.Contains(msg, "Failed to obtain guest migration lock") {
		return "config file lock", true
	}
	return "", false
}

// retryLocked runs op until it returns anything but a guest-lock error, or ctx ends.
// The final error names the lock and what usually holds it.
func (d *Driver) retryLocked(ctx context.Context, g driver.Guest, op func() error) error {
	start := time.Now()
	for attempt := 0; ; attempt++ {
		err := op()
		lock, ok := lockOf(err)
		if !ok || ctx.Err() != nil {
			if ok {
				return lockTimeout(g, lock, time.Since(start), ctx.Err())
			}
			return err
		}
		if retry.Sleep(ctx, retry.Locked.Delay(attempt)) != nil {
			return lockTimeout(g, lock, time.Since(start), ctx.Err())
		}
	}
}

func lockTimeout(g driver.Guest, lock string, waited time.Duration, cause error) error {
	return fmt.Errorf("the guest is locked (%s) and stayed locked for %s (%s); raise --timeout to wait longer: %w (%v)",
		lock, waited.Round(100*time.Millisecond), lockHint(g, lock), driver.ErrLocked, cause)
}

func lockHint(g driver.Guest, lock string) string {
	cmd := "qm"
	if g.Kind == driver.KindLXC {
		cmd = "pct"
	}
	switch lock {
	case "backup":
		return "a backup (vzdump) of it is running; schedule snapshots outside the backup window"
	case "snapshot":
		return "another snapshot of it is being taken"
	case "snapshot-delete":
		return fmt.Sprintf("a snapshot removal is running or failed earlier; if no task runs, clear it with `%s unlock %d` and remove the half-deleted snapshot with `%s delsnapshot %d NAME --force`", cmd, g.ID, cmd, g.ID)
	case "rollback":
		return "a rollback is running"
	case "migrate":
		return "it is being migrated"
	case "suspended":
		return "it is hibernated; resume it first"
	case "config file lock":
		return "another operation holds its configuration lock"
	}
	return fmt.Sprintf("if no task holds it, `%s unlock %d` clears it", cmd, g.ID)
}
