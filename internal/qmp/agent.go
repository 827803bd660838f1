package qmp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// ErrAgentSync marks a guest agent that did not answer the sync handshake: it is not
// running in the guest, the guest is stopped, or the channel is wedged.
var ErrAgentSync = errors.New("guest agent did not answer guest-sync-delimited")

// DefaultSyncTimeout bounds the sync handshake when ctx has no earlier deadline.
const DefaultSyncTimeout = 5 * time.Second

// Agent is one connection to a guest agent socket, synchronised by DialAgent. It is
// not safe for concurrent use: the agent answers one command at a time, in order.
type Agent struct {
	conn net.Conn
	r    *bufio.Reader
}

// DialAgent connects to the agent's host socket and synchronises the channel (see the
// package documentation). The handshake waits at most DefaultSyncTimeout, less when
// ctx ends sooner; a silent agent yields an error wrapping ErrAgentSync.
func DialAgent(ctx context.Context, path string) (*Agent, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	a := &Agent{conn: conn, r: bufio.NewReader(conn)}
	sctx, cancel := context.WithTimeout(ctx, DefaultSyncTimeout)
	defer cancel()
	if err := a.sync(sctx); err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: %w", ErrAgentSync, ctx.Err())
		}
		return nil, err
	}
	return a, nil
}

// Close hangs up.
func (a *Agent) Close() error { return a.conn.Close() }

func (a *Agent) deadline(ctx context.Context) func() {
	if d, ok := ctx.Deadline(); ok {
		a.conn.SetDeadline(d)
	} else {
		a.conn.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { a.conn.SetDeadline(time.Unix(1, 0)) })
	return func() { stop() }
}

func (a *Agent) sync(ctx context.Context) error {
	defer a.deadline(ctx)()
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	// JSON numbers beyond 2^53 lose precision in some agents' parsers; stay below.
	id := int64(binary.LittleEndian.Uint64(b[:]) & (1<<53 - 1))
	req := fmt.Sprintf("\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%d}}\n", id)
	if _, err := a.conn.Write([]byte(req)); err != nil {
		return fmt.Errorf("%w: %v", ErrAgentSync, err)
	}
	for {
		// Everything before the sentinel is left over from an earlier client.
		if _, err := a.r.ReadBytes(0xff); err != nil {
			return fmt.Errorf("%w: %v", ErrAgentSync, err)
		}
		for {
			line, err := a.r.ReadBytes('\n')
			if err != nil {
				return fmt.Errorf("%w: %v", ErrAgentSync, err)
			}
			line = bytes.TrimLeft(line, "\xff")
			var rep struct {
				Return *int64 `json:"return"`
			}
			if json.Unmarshal(line, &rep) == nil && rep.Return != nil && *rep.Return == id {
				return nil
			}
			if bytes.IndexByte(line, 0xff) >= 0 {
				break
			}
		}
	}
}

// Execute runs one agent command like Monitor.Execute. A timeout leaves the channel
// out of sync: close the Agent and dial again.
func (a *Agent) Execute(ctx context.Context, cmd string, args, result any) error {
	defer a.deadline(ctx)()
	msg := map[string]any{"execute": cmd}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	if _, err := a.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	for {
		line, err := a.r.ReadBytes('\n')
		if err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return fmt.Errorf("%s: no answer from the guest agent: %w", cmd, err)
		}
		line = bytes.TrimLeft(bytes.TrimSpace(line), "\xff")
		if len(line) == 0 {
			continue
		}
		var rep reply
		if err := json.Unmarshal(line, &rep); err != nil {
			return fmt.Errorf("%s: bad reply from the guest agent: %.100q", cmd, line)
		}
		if rep.Error != nil {
			return &Error{Command: cmd, Class: rep.Error.Class, Desc: rep.Error.Desc}
		}
		if rep.Return == nil {
			continue
		}
		if result != nil {
			if err := json.Unmarshal(rep.Return, result); err != nil {
				return fmt.Errorf("%s: decoding reply: %w", cmd, err)
			}
		}
		return nil
	}
}

// Ping runs guest-ping.
func (a *Agent) Ping(ctx context.Context) error { return a.Execute(ctx, "guest-ping", nil, nil) }

// FreezeStatus runs guest-fsfreeze-status and reports whether the guest's filesystems
// are frozen.
func (a *Agent) FreezeStatus(ctx context.Context) (bool, error) {
	var s string
	if err := a.Execute(ctx, "guest-fsfreeze-status", nil, &s); err != nil {
		return false, err
	}
	return s == "frozen", nil
}

// Freeze runs guest-fsfreeze-freeze and returns the number of filesystems frozen. On
// error the agent has thawed whatever it froze.
func (a *Agent) Freeze(ctx context.Context) (int, error) {
	var n int
	err := a.Execute(ctx, "guest-fsfreeze-freeze", nil, &n)
	return n, err
}

// Thaw runs guest-fsfreeze-thaw and returns the number of filesystems thawed.
func (a *Agent) Thaw(ctx context.Context) (int, error) {
	var n int
	err := a.Execute(ctx, "guest-fsfreeze-thaw", nil, &n)
	return n, err
}
