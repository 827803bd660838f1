package pveemu

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// task is one worker task (§5). Its state changes only under Cluster.mu.
type task struct {
	upid      string
	node      string
	pid       uint32
	pstart    uint32
	starttime int64
	typ       string
	id        string
	authid    string // user@realm or user@realm!tokenid
	log       []string
	done      bool
	exit      string
	endtime   int64
	timer     *time.Timer
	warnings  int
}

var upidRe = regexp.MustCompile(`^UPID:([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):([0-9A-Fa-f]{8}):([0-9A-Fa-f]{8,9}):([0-9A-Fa-f]{8}):([^:\s/]+):([^:\s/]*):([^:\s/]+):$`)

// newTask registers a running task (c.mu held) and returns it. The UPID has the form
// UPID:<node>:<pid %08X>:<pstart %08X>:<starttime %08X>:<type>:<id>:<user>: (§5.1).
func (c *Cluster) newTask(nodeName, typ, id, authid string) *task {
	n := c.nodes[nodeName]
	c.pid += 1 + uint32(len(c.tasks)%7)
	t := &task{
		node: nodeName, pid: c.pid, pstart: n.pstart + uint32(time.Since(n.boot).Seconds()*100)%0x100000,
		starttime: time.Now().Unix(), typ: typ, id: id, authid: authid,
	}
	t.upid = fmt.Sprintf("UPID:%s:%08X:%08X:%08X:%s:%s:%s:", nodeName, t.pid, t.pstart, t.starttime, typ, id, authid)
	c.tasks[t.upid] = t
	c.taskList = append(c.taskList, t)
	return t
}

// finish ends a task (c.mu held). exit is "OK", "WARNINGS: n" or an error text; the log
// gets the matching TASK line (§5.2).
func (t *task) finish(exit string) {
	if t.done {
		return
	}
	exit = strings.TrimRight(exit, "\n")
	switch {
	case exit == "OK":
		t.log = append(t.log, "TASK OK")
	case strings.HasPrefix(exit, "WARNINGS: "):
		t.log = append(t.log, "TASK "+exit)
	default:
		exit = strings.ReplaceAll(exit, "\n", " ")
		t.log = append(t.log, "TASK ERROR: "+exit)
	}
	t.exit = exit
	t.done = true
	t.endtime = time.Now().Unix()
}

func (t *task) logf(format string, args ...any) {
	t.log = append(t.log, fmt.Sprintf(format, args...))
}

func (t *task) warnf(format string, args ...any) {
	t.warnings++
	t.log = append(t.log, "WARN: "+fmt.Sprintf(format, args...))
}

// okExit is the exit status of a task that did its work: OK or WARNINGS: n.
func (t *task) okExit() string {
	if t.warnings > 0 {
		return fmt.Sprintf("WARNINGS: %d", t.warnings)
	}
	return "OK"
}

// isFailure reports whether an exit status is a failure (§5.2 success test).
func isFailure(exit string) bool {
	if exit == "OK" {
		return false
	}
	if n, ok := strings.CutPrefix(exit, "WARNINGS: "); ok {
		if _, err := strconv.Atoi(n); err == nil {
			return false
		}
	}
	return true
}

// schedule runs work under c.mu after the task duration and ends the task with its
// result. c.mu must be held by the caller.
func (c *Cluster) schedule(t *task, work func() string) {
	d := c.opts.TaskDuration
	t.timer = time.AfterFunc(d, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if t.done {
			return
		}
		t.finish(work())
	})
}

func (c *Cluster) taskJSON(t *task) map[string]any {
	user, tokenid, _ := strings.Cut(t.authid, "!")
	m := map[string]any{
		"upid": t.upid, "node": t.node, "pid": t.pid, "pstart": t.pstart,
		"starttime": t.starttime, "type": t.typ, "id": t.id, "user": user,
	}
	if tokenid != "" {
		m["tokenid"] = tokenid
	}
	if t.done {
		m["status"] = "stopped"
		m["exitstatus"] = t.exit
	} else {
		m["status"] = "running"
	}
	return m
}

// canSeeTask: the owner, the owner's user for its tokens, or Sys.Audit (§5.2).
func (rc *reqCtx) canSeeTask(t *task) bool {
	if t.authid == rc.authid {
		return true
	}
	if rc.tokenid == "" && strings.HasPrefix(t.authid, rc.user+"!") {
		return true
	}
	return rc.c.hasPriv(rc.authid, "Sys.Audit")
}

// lookupTask resolves {upid} on {node} (the task must live on that node, §5.2).
func (rc *reqCtx) lookupTask() (*task, *apiError) {
	upid := rc.p["upid"]
	m := upidRe.FindStringSubmatch(upid)
	if m == nil {
		return nil, paramErr(map[string]string{"upid": "unable to parse worker upid"})
	}
	t := rc.c.tasks[upid]
	if t == nil || t.node != rc.p["node"] {
		return nil, paramErr(map[string]string{"upid": "no such task"})
	}
	if !rc.canSeeTask(t) {
		return nil, errf(403, "Permission check failed (/nodes/%s, Sys.Audit)", rc.p["node"])
	}
	return t, nil
}

// GET /nodes/{node}/tasks/{upid}/status
func hTaskStatus(rc *reqCtx) (any, *int, *apiError) {
	rc.c.mu.Lock()
	defer rc.c.mu.Unlock()
	t, aerr := rc.lookupTask()
	if aerr != nil {
		return nil, nil, aerr
	}
	return rc.c.taskJSON(t), nil, nil
}

// GET /nodes/{node}/tasks/{upid}/log (§5.3): no existence check, only the UPID format.
func hTaskLog(rc *reqCtx) (any, *int, *apiError) {
	c := rc.c
	c.mu.Lock()
	defer c.mu.Unlock()
	upid := rc.p["upid"]
	if !upidRe.MatchString(upid) {
		return nil, nil, paramErr(map[string]string{"upid": "unable to parse worker upid"})
	}
	t := c.tasks[upid]
	var lines []string
	switch {
	case t == nil || t.node != rc.p["node"]:
		lines = []string{"unable to open file - No such file or directory"}
	case !rc.canSeeTask(t):
		return nil, nil, errf(403, "Permission check failed (/nodes/%s, Sys.Audit)", rc.p["node"])
	case len(t.log) == 0:
		lines = []string{"no content"}
	default:
		lines = t.log
	}
	start, limit := 0, 50
	if s, ok := rc.p["start"]; ok {
		start, _ = strconv.Atoi(s)
	}
	if s, ok := rc.p["limit"]; ok {
		limit, _ = strconv.Atoi(s)
	}
	out := []map[string]any{}
	for i := start; i < len(lines) && (limit == 0 || i < start+limit); i++ {
		out = append(out, map[string]any{"n": i + 1, "t": lines[i]})
	}
	total := len(lines)
	return out, &total, nil
}

// DELETE /nodes/{node}/tasks/{upid}: stop a running task. It ends with an error and the
// guest keeps the lock the task held, as after a killed worker.
func hTaskStop(rc *reqCtx) (any, *int, *apiError) {
	c := rc.c
	c.mu.Lock()
	defer c.mu.Unlock()
	t, aerr := rc.lookupTask()
	if aerr != nil {
		return nil, nil, aerr
	}
	if !t.done {
		if t.timer != nil {
			t.timer.Stop()
		}
		t.log = append(t.log, "received interrupt")
		t.finish("interrupted by signal")
		// the guest keeps whatever lock the task held, as after a killed worker
	}
	return nil, nil, nil
}

// GET /nodes/{node}/tasks (§5.4), newest first.
func hTaskList(rc *reqCtx) (any, *int, *apiError) {
	c := rc.c
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.listTasks(rc, rc.p["node"])
	total := len(out)
	start, limit := 0, 50
	if s, ok := rc.p["start"]; ok {
		start, _ = strconv.Atoi(s)
	}
	if s, ok := rc.p["limit"]; ok {
		limit, _ = strconv.Atoi(s)
	}
	if start > len(out) {
		start = len(out)
	}
	out = out[start:]
	if limit > 0 && limit < len(out) {
		out = out[:limit]
	}
	return out, &total, nil
}

func (c *Cluster) listTasks(rc *reqCtx, nodeName string) []map[string]any {
	out := []map[string]any{}
	vmid := rc.p["vmid"]
	typ := rc.p["typefilter"]
	user := rc.p["userfilter"]
	errorsOnly := rc.p["errors"] == "1"
	source := rc.p["source"]
	for i := len(c.taskList) - 1; i >= 0; i-- {
		t := c.taskList[i]
		if nodeName != "" && t.node != nodeName {
			continue
		}
		if !rc.canSeeTask(t) || (vmid != "" && t.id != vmid) || (typ != "" && t.typ != typ) ||
			(user != "" && !strings.Contains(t.authid, user)) {
			continue
		}
		if errorsOnly && (!t.done || !isFailure(t.exit)) {
			continue
		}
		if (source == "" || source == "archive") && !t.done {
			continue
		}
		if source == "active" && t.done {
			continue
		}
		m := c.taskJSON(t)
		delete(m, "exitstatus")
		if t.done {
			m["status"] = t.exit
			m["endtime"] = t.endtime
		} else {
			m["status"] = "RUNNING"
		}
		out = append(out, m)
	}
	return out
}

// GET /cluster/tasks: recent tasks cluster-wide.
func hClusterTasks(rc *reqCtx) (any, *int, *apiError) {
	c := rc.c
	c.mu.Lock()
	defer c.mu.Unlock()
	rc.p["source"] = "all"
	return c.listTasks(rc, ""), nil, nil
}

// TaskExit returns a task's exit status and whether it has finished (for assertions).
func (c *Cluster) TaskExit(upid string) (exit string, done bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t := c.tasks[upid]; t != nil {
		return t.exit, t.done
	}
	return "", false
}

// TaskLog returns a task's log lines.
func (c *Cluster) TaskLog(upid string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t := c.tasks[upid]; t != nil {
		return append([]string(nil), t.log...)
	}
	return nil
}

// WaitTasks blocks until no task is running (or the timeout elapses) and reports whether
// all tasks finished.
func (c *Cluster) WaitTasks(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		c.mu.Lock()
		busy := false
		for _, t := range c.tasks {
			if !t.done {
				busy = true
				break
			}
		}
		c.mu.Unlock()
		if !busy {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}
