package libvirt

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// qsd is a qemu-storage-daemon run for one offline backup, driven over QMP. It opens a
// shut-off guest's images the way QEMU would, so the same block jobs (blockdev-backup
// with sync=full or sync=bitmap) and persistent bitmaps serve a guest that is off.
type qsd struct {
	cmd  *exec.Cmd
	dir  string
	conn net.Conn
	rd   *bufio.Reader
	mu   sync.Mutex
	id   int
	// events are the asynchronous events received while waiting for replies.
	events []qmpEvent
	stderr strings.Builder
	done   chan error
}

type qmpEvent struct {
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
}

type qmpReply struct {
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	ID any `json:"id"`
}

// startQSD starts qemu-storage-daemon with a QMP monitor on a socket in a private
// temporary directory and negotiates capabilities.
func startQSD(ctx context.Context) (*qsd, error) {
	dir, err := os.MkdirTemp("", "autosnap-qsd-")
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "qmp.sock")
	q := &qsd{dir: dir, done: make(chan error, 1)}
	q.cmd = exec.Command("qemu-storage-daemon",
		"--chardev", "socket,id=m,path="+sock+",server=on,wait=off",
		"--monitor", "chardev=m")
	q.cmd.Stderr = &q.stderr
	if err := q.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		if errors.Is(err, exec.ErrNotFound) {
			return nil, fmt.Errorf("qemu-storage-daemon is not installed (Debian: apt-get install qemu-system-common): %w", err)
		}
		return nil, err
	}
	go func() { q.done <- q.cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		q.conn, err = net.Dial("unix", sock)
		if err == nil {
			break
		}
		select {
		case werr := <-q.done:
			os.RemoveAll(dir)
			return nil, fmt.Errorf("qemu-storage-daemon exited at start: %v: %s", werr, strings.TrimSpace(q.stderr.String()))
		case <-ctx.Done():
			q.kill()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			q.kill()
			return nil, fmt.Errorf("qemu-storage-daemon did not open its monitor within 30 s")
		}
	}
	q.rd = bufio.NewReader(q.conn)
	if _, err := q.rd.ReadBytes('\n'); err != nil { // greeting
		q.kill()
		return nil, fmt.Errorf("qemu-storage-daemon monitor: %w", err)
	}
	if _, err := q.run(ctx, "qmp_capabilities", nil); err != nil {
		q.kill()
		return nil, err
	}
	return q, nil
}

// run executes one QMP command and returns its result; events read meanwhile are kept.
func (q *qsd) run(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.id++
	msg := map[string]any{"execute": cmd, "id": q.id}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = q.conn.SetDeadline(dl)
	} else {
		_ = q.conn.SetDeadline(time.Now().Add(5 * time.Minute))
	}
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qemu-storage-daemon %s: %w", cmd, err)
	}
	for {
		line, err := q.rd.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("qemu-storage-daemon %s: %w", cmd, err)
		}
		var r qmpReply
		if err := json.Unmarshal(line, &r); err != nil {
			return nil, fmt.Errorf("qemu-storage-daemon %s: unreadable reply: %w", cmd, err)
		}
		if r.Event != "" {
			q.events = append(q.events, qmpEvent{r.Event, r.Data})
			continue
		}
		if r.Error != nil {
			return nil, fmt.Errorf("qemu-storage-daemon %s: %s", cmd, r.Error.Desc)
		}
		return r.Return, nil
	}
}

// takeEvents returns and forgets the events received so far.
func (q *qsd) takeEvents() []qmpEvent {
	q.mu.Lock()
	defer q.mu.Unlock()
	ev := q.events
	q.events = nil
	return ev
}

// quit asks the daemon to close its images cleanly (storing persistent bitmaps) and
// exit, and waits for it.
func (q *qsd) quit(ctx context.Context) error {
	defer os.RemoveAll(q.dir)
	_, qerr := q.run(ctx, "quit", nil)
	select {
	case err := <-q.done:
		if err != nil {
			return fmt.Errorf("qemu-storage-daemon exit: %v: %s", err, strings.TrimSpace(q.stderr.String()))
		}
		return nil
	case <-time.After(2 * time.Minute):
		q.kill()
		return fmt.Errorf("qemu-storage-daemon did not exit after quit (%v)", qerr)
	}
}

// kill stops the daemon hard; persistent bitmaps it added are then left inconsistent,
// which the next BackupSource reports as unusable.
func (q *qsd) kill() {
	if q.conn != nil {
		q.conn.Close()
	}
	_ = q.cmd.Process.Kill()
	<-q.done
	os.RemoveAll(q.dir)
}
