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
	"syscall"
	"time"
)

// qsd is a qemu-storage-daemon run for one offline backup, driven over QMP. It opens a
// shut-off guest's images the way QEMU would, so the same block jobs (blockdev-backup
// with sync=full or sync=bitmap) and persistent bitmaps serve a guest that is off.
type qsd struct {
	cmd    *exec.Cmd
	dir    string
	conn   net.Conn
	rd     *bufio.Reader
	mu     sync.Mutex
	id     int
	stderr strings.Builder
	// exited is closed once the daemon has exited, with exitErr its status.
	exited  chan struct{}
	exitErr error
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
	q := &qsd{dir: dir, exited: make(chan struct{})}
	q.cmd = exec.Command("qemu-storage-daemon",
		"--chardev", "socket,id=m,path="+sock+",server=on,wait=off",
		"--monitor", "chardev=m")
	q.cmd.Stderr = &q.stderr
	// If autosnap dies, the daemon exits cleanly (storing the bitmaps) instead of
	// holding the guest's images.
	q.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := q.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		if errors.Is(err, exec.ErrNotFound) {
			return nil, fmt.Errorf("qemu-storage-daemon is not installed (Debian: apt-get install qemu-system-common): %w", err)
		}
		return nil, err
	}
	go func() {
		q.exitErr = q.cmd.Wait()
		close(q.exited)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		q.conn, err = net.Dial("unix", sock)
		if err == nil {
			break
		}
		select {
		case <-q.exited:
			os.RemoveAll(dir)
			return nil, fmt.Errorf("qemu-storage-daemon exited at start: %v: %s", q.exitErr, strings.TrimSpace(q.stderr.String()))
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
			continue // jobs are polled with query-jobs
		}
		if r.Error != nil {
			return nil, fmt.Errorf("qemu-storage-daemon %s: %s", cmd, r.Error.Desc)
		}
		return r.Return, nil
	}
}

// quit asks the daemon to close its images cleanly (storing persistent bitmaps) and
// exit, and waits for it.
func (q *qsd) quit(ctx context.Context) error {
	defer os.RemoveAll(q.dir)
	_, qerr := q.run(ctx, "quit", nil)
	select {
	case <-q.exited:
		if q.exitErr != nil {
			return fmt.Errorf("qemu-storage-daemon exit: %v: %s", q.exitErr, strings.TrimSpace(q.stderr.String()))
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
	<-q.exited
	os.RemoveAll(q.dir)
}
