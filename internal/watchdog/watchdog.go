// Package watchdog guarantees that a guest autosnap froze is thawed even if autosnap
// dies (SIGKILL, OOM, power cut of the process) or hangs while the guest is frozen.
//
// The watchdog is a separate process started once per run. Before each freeze the run
// arms it for that guest and disarms it after the thaw. The watchdog thaws every armed
// guest as soon as its input closes — which the kernel does when the run dies, however
// it dies — and thaws a guest on its own when it stays armed longer than the bound.
//
// Protocol (lines on the watchdog's stdin / stdout):
//
//	run → watchdog: "arm ID KEY [ACTION]"   watchdog → run: "armed ID" or "unknown ID"
//	run → watchdog: "disarm ID"    watchdog → run: "disarmed ID" or "fired ID" (it thawed on its own)
//
// The watchdog first writes "ready" once it is connected and able to thaw. KEY identifies
// the guest for the thaw function (driver.Guest.Key); IDs are unique per run. ACTION
// names what undoes the guard's state (ActionThaw when absent, e.g. ActionResume for
// CPUs a run stopped); a watchdog that has no such action answers "unknown ID" and
// guards nothing, so a run never relies on a guard that is not there.
package watchdog

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/autosnap/autosnap/internal/retry"
)

// DefaultBound is the longest a guest stays frozen when autosnap hangs.
const DefaultBound = 10 * time.Second

// ThawRetry is how long the watchdog keeps trying to thaw a guest once it has to (the
// hypervisor may be restarting meanwhile).
const ThawRetry = 2 * time.Minute

// Actions a guard can be armed for.
const (
	// ActionThaw thaws the guest's filesystems (the default).
	ActionThaw = "thaw"
	// ActionResume resumes the guest's CPUs a run stopped, when they are still stopped
	// for the run's reason.
	ActionResume = "resume"
)

// ThawFunc thaws the guest identified by key (or undoes whatever its action guards).
type ThawFunc func(ctx context.Context, key string) error

// Serve runs the watchdog side of the protocol with the thaw action only.
func Serve(in io.Reader, out io.Writer, bound time.Duration, thaw ThawFunc, log io.Writer) error {
	return ServeActions(in, out, bound, map[string]ThawFunc{ActionThaw: thaw}, log)
}

// ServeActions runs the watchdog side of the protocol until in closes (then it undoes
// every armed guest's state with the action it was armed for) and returns. actions
// maps action words to their functions; log receives one line per action performed.
func ServeActions(in io.Reader, out io.Writer, bound time.Duration, actions map[string]ThawFunc, log io.Writer) error {
	type arm struct {
		key    string
		action string
		timer  *time.Timer
		fired  bool
	}
	var mu sync.Mutex
	armed := map[string]*arm{}
	var wmu sync.Mutex
	reply := func(format string, a ...any) {
		wmu.Lock()
		defer wmu.Unlock()
		fmt.Fprintf(out, format+"\n", a...)
	}
	doThaw := func(a *arm, why string) {
		// Retry: the agent may be busy finishing the freeze it was asked for, the QMP
		// socket may still be held, or the hypervisor may be restarting (thaw
		// reconnects); a frozen or paused guest is worth trying for a long while.
		ctx, cancel := context.WithTimeout(context.Background(), max(bound, ThawRetry))
		defer cancel()
		f := actions[a.action]
		err := retry.Do(ctx, retry.Default, func() error { return f(ctx, a.key) })
		done, hint := "thawed", "thaw it by hand: virsh domfsthaw"
		if a.action == ActionResume {
			done, hint = "resumed", "resume it by hand: virsh resume, or QMP cont"
		}
		if err == nil {
			fmt.Fprintf(log, "autosnap watchdog: %s %s (%s)\n", done, a.key, why)
			return
		}
		fmt.Fprintf(log, "autosnap watchdog: could not %s %s (%s): %v — %s\n", a.action, a.key, why, err, hint)
	}
	reply("ready")
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case (len(f) == 3 || len(f) == 4) && f[0] == "arm":
			id, key, action := f[1], f[2], ActionThaw
			if len(f) == 4 {
				action = f[3]
			}
			if actions[action] == nil {
				reply("unknown %s", id)
				continue
			}
			a := &arm{key: key, action: action}
			mu.Lock()
			armed[id] = a
			a.timer = time.AfterFunc(bound, func() {
				mu.Lock()
				if armed[id] != a {
					mu.Unlock()
					return
				}
				a.fired = true
				mu.Unlock()
				doThaw(a, fmt.Sprintf("armed longer than %s", bound))
			})
			mu.Unlock()
			reply("armed %s", id)
		case len(f) == 2 && f[0] == "disarm":
			mu.Lock()
			a := armed[f[1]]
			delete(armed, f[1])
			mu.Unlock()
			if a == nil {
				reply("disarmed %s", f[1])
				continue
			}
			a.timer.Stop()
			if a.fired {
				reply("fired %s", f[1])
			} else {
				reply("disarmed %s", f[1])
			}
		default:
			fmt.Fprintf(log, "autosnap watchdog: ignoring %q\n", sc.Text())
		}
	}
	// Input closed: the run is gone (or finished). Thaw whatever it left armed.
	mu.Lock()
	left := armed
	armed = map[string]*arm{}
	mu.Unlock()
	var wg sync.WaitGroup
	for _, a := range left {
		a.timer.Stop()
		wg.Add(1)
		go func(a *arm) {
			defer wg.Done()
			doThaw(a, "autosnap exited while the guard was armed")
		}(a)
	}
	wg.Wait()
	return sc.Err()
}

// Client is the run's side: it starts the watchdog process lazily and arms/disarms it.
type Client struct {
	// Command builds the watchdog process; its stdin/stdout are set by the Client.
	Command func() *exec.Cmd

	mu    sync.Mutex
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
	next  int
	err   error
}

// ErrFired is returned by Disarm when the watchdog thawed the guest itself because it
// stayed frozen too long: the snapshot taken meanwhile may not be quiesced.
var ErrFired = errors.New("the watchdog thawed the guest before autosnap did")

func (c *Client) start() error {
	if c.cmd != nil || c.err != nil {
		return c.err
	}
	cmd := c.Command()
	// Its own process group: a Ctrl-C for autosnap must not kill the watchdog too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		c.err = err
		return err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		c.err = err
		return err
	}
	if err := cmd.Start(); err != nil {
		c.err = fmt.Errorf("starting the freeze watchdog: %w", err)
		return c.err
	}
	c.cmd, c.in, c.lines = cmd, in, make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	select {
	case line := <-c.lines:
		if line == "ready" {
			return nil
		}
		c.err = fmt.Errorf("freeze watchdog failed to start: %q", line)
	case <-time.After(30 * time.Second):
		c.err = errors.New("freeze watchdog did not get ready in 30 s")
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	return c.err
}

// roundTrip sends one request and waits for the reply with the same id. Calls are
// serialised, so replies arrive in order.
func (c *Client) roundTrip(ctx context.Context, req, id string) (string, error) {
	if _, err := fmt.Fprintln(c.in, req); err != nil {
		return "", fmt.Errorf("freeze watchdog: %w", err)
	}
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				return "", errors.New("freeze watchdog exited")
			}
			f := strings.Fields(line)
			if len(f) != 2 {
				return "", fmt.Errorf("freeze watchdog: unexpected reply %q", line)
			}
			if f[1] != id {
				continue // the late answer to a request that timed out earlier
			}
			return f[0], nil
		case <-ctx.Done():
			return "", fmt.Errorf("freeze watchdog did not answer: %w", ctx.Err())
		}
	}
}

// Arm registers a guest about to be frozen and returns its id. The guest must not be
// frozen unless Arm succeeded.
func (c *Client) Arm(ctx context.Context, key string) (string, error) {
	return c.ArmAction(ctx, key, ActionThaw)
}

// ArmAction registers a guest whose state the watchdog must undo with action if the
// run dies (or stays armed past the bound), and returns its id. The state must not be
// entered unless ArmAction succeeded.
func (c *Client) ArmAction(ctx context.Context, key, action string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.start(); err != nil {
		return "", err
	}
	c.next++
	id := fmt.Sprint(c.next)
	req := "arm " + id + " " + key
	if action != ActionThaw {
		req += " " + action
	}
	r, err := c.roundTrip(ctx, req, id)
	if err != nil {
		return "", err
	}
	if r == "unknown" {
		return "", fmt.Errorf("freeze watchdog: it cannot %s guest %s", action, key)
	}
	if r != "armed" {
		return "", fmt.Errorf("freeze watchdog: %s", r)
	}
	return id, nil
}

// Disarm tells the watchdog the guest was thawed. It returns ErrFired when the
// watchdog had to thaw it first.
func (c *Client) Disarm(ctx context.Context, id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil {
		return errors.New("freeze watchdog not running")
	}
	r, err := c.roundTrip(ctx, "disarm "+id, id)
	if err != nil {
		return err
	}
	if r == "fired" {
		return ErrFired
	}
	return nil
}

// Close stops the watchdog after the run: with nothing armed it just exits.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil {
		return nil
	}
	c.in.Close()
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(DefaultBound + 5*time.Second):
		_ = c.cmd.Process.Kill()
		return errors.New("freeze watchdog did not exit")
	}
}
