package qmp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeServer listens on a unix socket and runs handle for every connection.
func fakeServer(t *testing.T, handle func(c net.Conn)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return path
}

const greeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}` + "\n"

type cmd struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        string          `json:"id"`
}

// qmpServer greets, then answers each command with answer(cmd) lines; it fails the
// test when a command arrives before qmp_capabilities.
func qmpServer(t *testing.T, answer func(c cmd) []string) string {
	return fakeServer(t, func(c net.Conn) {
		fmt.Fprint(c, greeting)
		r := bufio.NewReader(c)
		negotiated := false
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			var x cmd
			if err := json.Unmarshal(line, &x); err != nil {
				t.Errorf("server got bad JSON %q", line)
				return
			}
			if x.Execute == "qmp_capabilities" {
				negotiated = true
				fmt.Fprintf(c, `{"return": {}, "id": %q}`+"\n", x.ID)
				continue
			}
			if !negotiated {
				t.Errorf("%s sent before qmp_capabilities", x.Execute)
			}
			for _, l := range answer(x) {
				fmt.Fprint(c, l+"\n")
			}
		}
	})
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

func TestExecuteMatchesRepliesByIDAcrossEvents(t *testing.T) {
	path := qmpServer(t, func(c cmd) []string {
		switch c.Execute {
		case "query-status":
			return []string{
				`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": {}}`,
				`{"return": {"status": "paused"}, "id": "someone-else"}`,
				fmt.Sprintf(`{"return": {"status": "running", "running": true}, "id": %q}`, c.ID),
			}
		case "bad":
			return []string{fmt.Sprintf(`{"error": {"class": "CommandNotFound", "desc": "The command bad has not been found"}, "id": %q}`, c.ID)}
		}
		return nil
	})
	m, err := Dial(ctxT(t, 5*time.Second), path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if v := m.Version(); v.String() != "7.2.22" || !v.AtLeast(7, 1) || v.AtLeast(7, 3) {
		t.Errorf("version %v", v)
	}
	events, stop := m.Subscribe()
	defer stop()
	var st struct {
		Status string `json:"status"`
	}
	if err := m.Execute(ctxT(t, 5*time.Second), "query-status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Status != "running" {
		t.Errorf("status %q: a reply with another id was taken as ours", st.Status)
	}
	select {
	case ev := <-events:
		if ev.Name != "STOP" || ev.Time.Unix() != 1 {
			t.Errorf("event %+v", ev)
		}
	case <-time.After(2 * time.Second):
		t.Error("the STOP event was not delivered")
	}
	err = m.Execute(ctxT(t, 5*time.Second), "bad", nil, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" || !strings.Contains(err.Error(), "bad has not been found") {
		t.Errorf("error reply: %v", err)
	}
}

func TestDialBusySocket(t *testing.T) {
	release := make(chan struct{})
	path := fakeServer(t, func(c net.Conn) { <-release }) // never greets: another client holds QEMU
	defer close(release)
	start := time.Now()
	_, err := Dial(ctxT(t, 300*time.Millisecond), path)
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("Dial of a socket that does not greet: %v, want ErrBusy", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Dial took %s despite a 300ms deadline", d)
	}
}

func TestExecuteHonoursContext(t *testing.T) {
	path := qmpServer(t, func(c cmd) []string { return nil }) // never answers
	m, err := Dial(ctxT(t, 5*time.Second), path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	start := time.Now()
	err = m.Execute(ctxT(t, 200*time.Millisecond), "query-status", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Errorf("Execute without answer: %v after %s", err, time.Since(start))
	}
}

func TestExecuteAfterQEMUQuit(t *testing.T) {
	path := fakeServer(t, func(c net.Conn) {
		fmt.Fprint(c, greeting)
		r := bufio.NewReader(c)
		line, _ := r.ReadBytes('\n')
		var x cmd
		json.Unmarshal(line, &x)
		fmt.Fprintf(c, `{"return": {}, "id": %q}`+"\n", x.ID)
		r.ReadBytes('\n') // the next command: QEMU exits without answering
	})
	m, err := Dial(ctxT(t, 5*time.Second), path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Execute(ctxT(t, 5*time.Second), "quit", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Execute on a connection QEMU closed: %v, want ErrClosed", err)
	}
}

func TestRunJob(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	polls := 0
	path := qmpServer(t, func(c cmd) []string {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, c.Execute)
		ok := fmt.Sprintf(`{"return": {}, "id": %q}`, c.ID)
		switch c.Execute {
		case "snapshot-save":
			var a struct {
				JobID string `json:"job-id"`
			}
			json.Unmarshal(c.Arguments, &a)
			return []string{`{"event": "JOB_STATUS_CHANGE", "data": {"status": "created", "id": "` + a.JobID + `"}}`, ok}
		case "query-jobs":
			polls++
			status, errf := "running", ""
			if polls >= 3 {
				status, errf = "concluded", `, "error": "Device 'disk-vda' is writable but does not support snapshots"`
			}
			return []string{fmt.Sprintf(`{"return": [{"id": "j1", "type": "snapshot-save", "status": %q%s}], "id": %q}`, status, errf, c.ID)}
		}
		return []string{ok}
	})
	m, err := Dial(ctxT(t, 5*time.Second), path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	err = m.RunJob(ctxT(t, 10*time.Second), "snapshot-save", "j1", map[string]any{"job-id": "j1"})
	var qe *Error
	if !errors.As(err, &qe) || !strings.Contains(qe.Desc, "does not support snapshots") {
		t.Fatalf("RunJob of a failing job: %v, want the job's error", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if seen[len(seen)-1] != "job-dismiss" {
		t.Errorf("commands %v: the concluded job was not dismissed", seen)
	}
}

// agentServer is a fake guest agent: stale bytes from an earlier client sit in the
// channel, and it answers the sync with a stale reply before the real one.
func agentServer(t *testing.T, gotFlush *bool, mu *sync.Mutex) string {
	return fakeServer(t, func(c net.Conn) {
		fmt.Fprint(c, `{"return": 4}`+"\n"+`{"return": 99999}`+"\n") // replies a timed-out client never read
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			if line[0] == 0xff {
				mu.Lock()
				*gotFlush = true
				mu.Unlock()
				line = bytes.TrimLeft(line, "\xff")
			}
			var x struct {
				Execute   string `json:"execute"`
				Arguments struct {
					ID int64 `json:"id"`
				} `json:"arguments"`
			}
			if json.Unmarshal(line, &x) != nil {
				fmt.Fprint(c, `{"error": {"class": "GenericError", "desc": "JSON parse error"}}`+"\n")
				continue
			}
			switch x.Execute {
			case "guest-sync-delimited":
				fmt.Fprintf(c, "{\"return\": 12}\n\xff{\"return\": %d}\n", x.Arguments.ID)
			case "guest-fsfreeze-freeze":
				fmt.Fprint(c, `{"return": 2}`+"\n")
			case "guest-fsfreeze-status":
				fmt.Fprint(c, `{"return": "frozen"}`+"\n")
			case "guest-ping":
				fmt.Fprint(c, `{"return": {}}`+"\n")
			default:
				fmt.Fprint(c, `{"error": {"class": "CommandNotFound", "desc": "not found"}}`+"\n")
			}
		}
	})
}

func TestAgentSyncDiscardsStaleOutput(t *testing.T) {
	var mu sync.Mutex
	flushed := false
	path := agentServer(t, &flushed, &mu)
	a, err := DialAgent(ctxT(t, 5*time.Second), path)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	mu.Lock()
	if !flushed {
		t.Error("the sync request was not preceded by the 0xFF flush byte")
	}
	mu.Unlock()
	n, err := a.Freeze(ctxT(t, 5*time.Second))
	if err != nil || n != 2 {
		t.Fatalf("Freeze after sync: %d, %v; want 2 (a stale reply was taken for it)", n, err)
	}
	frozen, err := a.FreezeStatus(ctxT(t, 5*time.Second))
	if err != nil || !frozen {
		t.Errorf("FreezeStatus: %v, %v", frozen, err)
	}
	if err := a.Ping(ctxT(t, 5*time.Second)); err != nil {
		t.Errorf("Ping: %v", err)
	}
	var qe *Error
	if err := a.Execute(ctxT(t, 5*time.Second), "guest-nosuch", nil, nil); !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Errorf("unknown command: %v", err)
	}
}

func TestAgentSilent(t *testing.T) {
	release := make(chan struct{})
	path := fakeServer(t, func(c net.Conn) { <-release }) // a stopped guest: nobody reads the channel
	defer close(release)
	start := time.Now()
	_, err := DialAgent(ctxT(t, 300*time.Millisecond), path)
	if !errors.Is(err, ErrAgentSync) {
		t.Errorf("DialAgent of a silent agent: %v, want ErrAgentSync", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("DialAgent took %s despite a 300ms deadline", d)
	}
}
