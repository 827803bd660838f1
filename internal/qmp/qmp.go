// Package qmp is a small client for QEMU's machine protocol (QMP) and for the QEMU
// guest agent, enough for autosnap's snapshot and freeze work on standalone QEMU.
//
// QMP (Dial, Monitor): the greeting is read and qmp_capabilities sent before Dial
// returns; commands carry ids and their replies are matched by id, so asynchronous
// events interleaved with replies never confuse them; events go to every subscriber
// (Subscribe) and to nobody else; RunJob starts a job command and waits until the job
// concluded, returns its error and dismisses it. Every call honours its context.
//
// A QMP socket serves one client at a time: a second client's connect succeeds, but
// QEMU sends it no greeting until the first one hangs up. Dial reports that case as
// an error wrapping ErrBusy once ctx (or the greeting timeout) runs out.
//
// The guest agent (DialAgent, Agent) speaks QMP-style JSON without a greeting over a
// virtio-serial channel that has no connection semantics: output for a client that
// gave up may still be in the pipe. DialAgent therefore sends the 0xFF flush byte and
// guest-sync-delimited with a random id, discards everything up to the agent's 0xFF
// sentinel and every reply without that id, and only then is the channel usable.
//
// digitalocean/go-qemu's qmp package was considered: its SocketMonitor has events and
// capabilities negotiation, but commands carry no ids, it takes no contexts, and it has
// no guest-agent framing; this package is about as small as the glue it would need.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// ErrBusy marks a QMP socket whose single client slot is taken by another program.
var ErrBusy = errors.New("QMP socket busy: another client is connected")

// ErrClosed is returned by calls on a closed or broken connection.
var ErrClosed = errors.New("QMP connection closed")

// DefaultGreetingTimeout bounds the wait for QEMU's greeting when ctx has no deadline.
const DefaultGreetingTimeout = 5 * time.Second

// Error is an error reply of QEMU or of the guest agent.
type Error struct {
	Command string
	Class   string
	Desc    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s (%s)", e.Command, e.Desc, e.Class)
}

// Event is an asynchronous QMP event.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
	Time time.Time       `json:"-"`
}

// Version is QEMU's version from the greeting.
type Version struct {
	Major, Minor, Micro int
}

// AtLeast reports whether v is major.minor or newer.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || (v.Major == major && v.Minor >= minor)
}

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }

type reply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	ID    json.RawMessage `json:"id"`
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
	Stamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// Monitor is one QMP connection. Its methods are safe for concurrent use.
type Monitor struct {
	conn    net.Conn
	version Version
	nextID  atomic.Uint64

	wmu sync.Mutex // serialises writes

	mu      sync.Mutex
	pending map[string]chan reply
	subs    map[int]chan Event
	nextSub int
	err     error         // set once the reader stops
	done    chan struct{} // closed when the reader stops
}

// Dial connects to the QMP socket at path, reads the greeting and negotiates
// capabilities. When no greeting arrives before ctx's deadline (or
// DefaultGreetingTimeout without one), another client holds the socket and the error
// wraps ErrBusy.
func Dial(ctx context.Context, path string) (*Monitor, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	m, err := newMonitor(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return m, nil
}

func newMonitor(ctx context.Context, conn net.Conn) (*Monitor, error) {
	deadline, ok := ctx.Deadline()
	if !ok || time.Until(deadline) > DefaultGreetingTimeout {
		deadline = time.Now().Add(DefaultGreetingTimeout)
	}
	wait := time.Until(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	conn.SetReadDeadline(deadline)
	r := bufio.NewReader(conn)
	line, err := r.ReadBytes('\n')
	stop()
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("waiting for QEMU's greeting: %w (%w)", ctx.Err(), ErrBusy)
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, fmt.Errorf("no greeting within %s: %w", wait.Round(100*time.Millisecond), ErrBusy)
		}
		return nil, fmt.Errorf("reading QEMU's greeting: %w", err)
	}
	var greet struct {
		QMP *struct {
			Version struct {
				QEMU struct{ Major, Minor, Micro int } `json:"qemu"`
			} `json:"version"`
		} `json:"QMP"`
	}
	if err := json.Unmarshal(line, &greet); err != nil || greet.QMP == nil {
		return nil, fmt.Errorf("not a QMP greeting: %.100q", line)
	}
	conn.SetReadDeadline(time.Time{})
	q := greet.QMP.Version.QEMU
	m := &Monitor{conn: conn, version: Version{q.Major, q.Minor, q.Micro},
		pending: map[string]chan reply{}, subs: map[int]chan Event{}, done: make(chan struct{})}
	go m.read(r)
	if err := m.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		return nil, err
	}
	return m, nil
}

// Version is the QEMU version the greeting announced.
func (m *Monitor) Version() Version { return m.version }

// Conn is the underlying connection (for peer credentials).
func (m *Monitor) Conn() net.Conn { return m.conn }

// Close hangs up; QEMU then serves its next client.
func (m *Monitor) Close() error {
	err := m.conn.Close()
	<-m.done
	return err
}

// Done is closed when the connection is gone (QEMU quit, or Close).
func (m *Monitor) Done() <-chan struct{} { return m.done }

func (m *Monitor) read(r *bufio.Reader) {
	var err error
	for {
		var line []byte
		line, err = r.ReadBytes('\n')
		if err != nil {
			break
		}
		var rep reply
		if json.Unmarshal(line, &rep) != nil {
			continue // QMP sends whole JSON objects per line; skip garbage
		}
		if rep.Event != "" {
			ev := Event{Name: rep.Event, Data: rep.Data}
			if rep.Stamp != nil {
				ev.Time = time.Unix(rep.Stamp.Seconds, rep.Stamp.Microseconds*1000)
			}
			m.mu.Lock()
			for _, c := range m.subs {
				select {
				case c <- ev:
				default: // a subscriber that does not keep up loses events, never blocks replies
				}
			}
			m.mu.Unlock()
			continue
		}
		var id string
		if json.Unmarshal(rep.ID, &id) != nil {
			continue
		}
		m.mu.Lock()
		c := m.pending[id]
		delete(m.pending, id)
		m.mu.Unlock()
		if c != nil {
			c <- rep
		}
	}
	m.mu.Lock()
	m.err = fmt.Errorf("%w: %v", ErrClosed, err)
	for id, c := range m.pending {
		close(c)
		delete(m.pending, id)
	}
	m.mu.Unlock()
	close(m.done)
}

// Subscribe returns a channel that receives every event from now on, and a function
// that ends the subscription. Up to 256 events are buffered; later ones are dropped
// while the buffer is full.
func (m *Monitor) Subscribe() (<-chan Event, func()) {
	c := make(chan Event, 256)
	m.mu.Lock()
	id := m.nextSub
	m.nextSub++
	m.subs[id] = c
	m.mu.Unlock()
	return c, func() {
		m.mu.Lock()
		delete(m.subs, id)
		m.mu.Unlock()
	}
}

// Execute runs one command. args is marshalled as its "arguments" (nil: none); the
// reply's "return" is unmarshalled into result unless it is nil. Error replies are
// returned as *Error. When ctx ends first, Execute returns ctx's error; the command
// may still run in QEMU.
func (m *Monitor) Execute(ctx context.Context, cmd string, args, result any) error {
	id := "autosnap-" + strconv.FormatUint(m.nextID.Add(1), 10)
	msg := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	c := make(chan reply, 1)
	m.mu.Lock()
	if m.err != nil {
		m.mu.Unlock()
		return fmt.Errorf("%s: %w", cmd, m.err)
	}
	m.pending[id] = c
	m.mu.Unlock()
	forget := func() {
		m.mu.Lock()
		delete(m.pending, id)
		m.mu.Unlock()
	}
	m.wmu.Lock()
	if d, ok := ctx.Deadline(); ok {
		m.conn.SetWriteDeadline(d)
	} else {
		m.conn.SetWriteDeadline(time.Time{})
	}
	_, err = m.conn.Write(append(b, '\n'))
	m.wmu.Unlock()
	if err != nil {
		forget()
		return fmt.Errorf("%s: %w", cmd, err)
	}
	select {
	case rep, ok := <-c:
		if !ok {
			m.mu.Lock()
			err := m.err
			m.mu.Unlock()
			return fmt.Errorf("%s: %w", cmd, err)
		}
		if rep.Error != nil {
			return &Error{Command: cmd, Class: rep.Error.Class, Desc: rep.Error.Desc}
		}
		if result != nil {
			if err := json.Unmarshal(rep.Return, result); err != nil {
				return fmt.Errorf("%s: decoding reply: %w", cmd, err)
			}
		}
		return nil
	case <-ctx.Done():
		forget()
		return fmt.Errorf("%s: %w", cmd, ctx.Err())
	}
}

// JobInfo is one entry of query-jobs.
type JobInfo struct {
	ID     string `json:"id"`
	Type   string `json:"type"`
	Status string `json:"status"`
	Error  string `json:"error"`
}

// jobPoll is how often RunJob asks query-jobs when no event arrives (some jobs, like
// snapshot-delete in QEMU 7.2, do not announce every status change).
const jobPoll = 100 * time.Millisecond

// RunJob runs a command that starts a job named id (snapshot-save, snapshot-load,
// snapshot-delete, …), waits until the job concluded, dismisses it and returns the
// job's error, if any. When ctx ends first the job is cancelled (job-cancel) and
// dismissed on a best-effort basis and ctx's error is returned.
func (m *Monitor) RunJob(ctx context.Context, cmd, id string, args any) error {
	events, unsubscribe := m.Subscribe()
	defer unsubscribe()
	if err := m.Execute(ctx, cmd, args, nil); err != nil {
		return err
	}
	tick := time.NewTicker(jobPoll)
	defer tick.Stop()
	for {
		var jobs []JobInfo
		if err := m.Execute(ctx, "query-jobs", nil, &jobs); err != nil {
			m.abandonJob(id)
			return fmt.Errorf("job %s (%s): %w", id, cmd, err)
		}
		found := false
		for _, j := range jobs {
			if j.ID != id {
				continue
			}
			found = true
			if j.Status == "concluded" {
				dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				derr := m.Execute(dctx, "job-dismiss", map[string]any{"id": id}, nil)
				cancel()
				if j.Error != "" {
					return &Error{Command: cmd, Class: "JobFailed", Desc: j.Error}
				}
				if derr != nil {
					return fmt.Errorf("job %s (%s) concluded but could not be dismissed: %w", id, cmd, derr)
				}
				return nil
			}
		}
		if !found {
			return fmt.Errorf("job %s (%s) vanished before it concluded (dismissed by another client?)", id, cmd)
		}
		select {
		case <-ctx.Done():
			m.abandonJob(id)
			return fmt.Errorf("job %s (%s): %w", id, cmd, ctx.Err())
		case <-m.done:
			return fmt.Errorf("job %s (%s): %w", id, cmd, ErrClosed)
		case <-events:
		case <-tick.C:
		}
	}
}

func (m *Monitor) abandonJob(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = m.Execute(ctx, "job-cancel", map[string]any{"id": id}, nil)
	_ = m.Execute(ctx, "job-dismiss", map[string]any{"id": id}, nil)
}
