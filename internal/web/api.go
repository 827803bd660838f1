package web

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// apiSession tells a cookie-authenticated script or page its user and CSRF token.
func (s *server) apiSession(w http.ResponseWriter, r *http.Request) {
	a := authOf(r.Context())
	out := map[string]any{"user": a.user, "auth_required": s.auth}
	if a.sess != nil {
		out["csrf"] = s.sess.csrf(a.sess.id)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) apiGuests(w http.ResponseWriter, r *http.Request) {
	o, err := s.overviewData(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if o.Guests == nil {
		o.Guests = []guestView{}
	}
	writeJSON(w, http.StatusOK, o.Guests)
}

func (s *server) apiGuest(w http.ResponseWriter, r *http.Request) {
	d, runs, ok := s.guestWithRuns(w, r)
	if !ok {
		return
	}
	tree := []treeRow{}
	tree = append(tree, snapshotTree(d.Snapshots)...)
	backups := d.Backups
	if backups == nil {
		backups = []BackupPoint{}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"guest": s.view(d.Guest), "snapshots": treeJSON(tree), "backups": backups, "runs": runs,
	})
}

// treeJSON flattens tree rows: the snapshot's fields plus depth and children.
func treeJSON(rows []treeRow) []map[string]any {
	out := make([]map[string]any, 0, len(rows))
	for _, r := range rows {
		b, _ := json.Marshal(r.Snapshot)
		m := map[string]any{}
		_ = json.Unmarshal(b, &m)
		m["depth"], m["children"] = r.Depth, r.Children
		out = append(out, m)
	}
	return out
}

func (s *server) apiRuns(w http.ResponseWriter, r *http.Request) {
	jobs, err := s.b.Jobs(r.Context(), runsQuery(r.URL.Query()))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := []jobView{}
	for _, j := range jobs {
		out = append(out, s.jobView(j))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) apiRun(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		httpError(w, r, http.StatusNotFound, "no such run")
		return
	}
	j, err := s.b.Job(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s.jobView(j))
}

func (s *server) apiPolicies(w http.ResponseWriter, r *http.Request) {
	ps, err := s.b.Policies(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if ps == nil {
		ps = []Policy{}
	}
	writeJSON(w, http.StatusOK, ps)
}

// apiProblems lists the checks the backend could not make (an empty list when it
// reports none).
func (s *server) apiProblems(w http.ResponseWriter, r *http.Request) {
	out := []string{}
	if pr, ok := s.b.(ProblemReporter); ok {
		out = append(out, pr.Problems(r.Context())...)
	}
	writeJSON(w, http.StatusOK, out)
}

// apiRunPolicy starts a policy run. Body (optional): {"dry_run": true, "kind":
// "snapshot"|"backup"} (no kind: the policy's snapshot job, else its backup job).
func (s *server) apiRunPolicy(w http.ResponseWriter, r *http.Request) {
	var body struct {
		DryRun bool   `json:"dry_run"`
		Kind   string `json:"kind"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&body); err != nil && err != io.EOF {
		httpError(w, r, http.StatusBadRequest, "body: "+err.Error())
		return
	}
	kind, ok := runKind(body.Kind)
	if !ok {
		httpError(w, r, http.StatusBadRequest, "kind: use snapshot or backup")
		return
	}
	id, err := s.b.RunPolicy(r.Context(), r.PathValue("name"), kind, body.DryRun)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"job": id, "url": fmt.Sprintf("/api/v1/runs/%d", id)})
}

func (s *server) apiPlan(w http.ResponseWriter, r *http.Request) {
	p, err := s.b.PlanPolicy(r.Context(), r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if p.Items == nil {
		p.Items = []PlanItem{}
	}
	writeJSON(w, http.StatusOK, p)
}

func (s *server) apiVerify(w http.ResponseWriter, r *http.Request) {
	id, err := s.b.VerifyBackup(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"job": id, "url": fmt.Sprintf("/api/v1/runs/%d", id)})
}

// events streams Backend events as server-sent events (event: job, data: Event JSON)
// with a comment line every 15 s so proxies keep the connection.
func (s *server) events(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{})
	ch, cancel := s.b.Subscribe()
	defer cancel()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, "retry: 2000\n\n")
	if err := rc.Flush(); err != nil {
		return
	}
	tick := time.NewTicker(15 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
			_, _ = io.WriteString(w, ": keepalive\n\n")
		case ev, ok := <-ch:
			if !ok {
				return
			}
			b, _ := json.Marshal(ev)
			if _, err := fmt.Fprintf(w, "event: job\ndata: %s\n\n", b); err != nil {
				return
			}
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}
