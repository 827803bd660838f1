package libvirt

import (
	"context"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/autosnap/autosnap/internal/retry"
)

// jobEvents wakes the watchers of block jobs when libvirt reports a block-job event
// (ready, completed, failed, cancelled) on their guest. The events only hasten a
// look: the job's state is always read back with jobInfo, so a lost or unrelated
// event costs at most one call, and without events (subscribing failed) watchers
// poll as before.
type jobEvents struct {
	once    sync.Once
	on      bool
	mu      sync.Mutex
	waiters map[golibvirt.UUID]map[chan struct{}]bool
}

// watchJobs returns a channel that receives (coalesced) when a block-job event of
// dom arrives, nil when the driver gets no events, and a function to stop. Called
// before the job starts, it misses no event of it. The first call subscribes, once
// for the connection (one call to libvirt).
func (d *Driver) watchJobs(dom golibvirt.Domain) (<-chan struct{}, func()) {
	e := &d.jobEv
	e.once.Do(func() {
		ch, err := d.l.SubscribeEvents(context.Background(), golibvirt.DomainEventIDBlockJob, golibvirt.OptDomain{})
		if err != nil {
			return
		}
		e.on = true
		e.waiters = map[golibvirt.UUID]map[chan struct{}]bool{}
		go func() {
			for ev := range ch {
				m, ok := ev.(*golibvirt.DomainEventCallbackBlockJobMsg)
				if !ok {
					continue
				}
				e.mu.Lock()
				for w := range e.waiters[m.Msg.Dom.UUID] {
					select {
					case w <- struct{}{}:
					default: // one pending wake-up is enough
					}
				}
				e.mu.Unlock()
			}
			// The connection closed: watchers find out by their next look.
			e.mu.Lock()
			e.on = false
			e.mu.Unlock()
		}()
	})
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.on {
		return nil, func() {}
	}
	w := make(chan struct{}, 1)
	if e.waiters[dom.UUID] == nil {
		e.waiters[dom.UUID] = map[chan struct{}]bool{}
	}
	e.waiters[dom.UUID][w] = true
	return w, func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		if ws := e.waiters[dom.UUID]; ws[w] {
			delete(ws, w)
			if len(ws) == 0 {
				delete(e.waiters, dom.UUID)
			}
		}
	}
}

// eventFallback is how often a block job is looked at when events come: for its
// progress, for stalls, and in case an event is lost.
const eventFallback = 500 * time.Millisecond

// jobPause waits before the next look at a block job: until wake fires or, as a
// fallback, eventFallback; without events, the poll policy's delay. It fails only
// when ctx ends.
func jobPause(ctx context.Context, wake <-chan struct{}, polls int) error {
	delay := retry.Poll.Delay(polls)
	if wake == nil {
		return retry.Sleep(ctx, delay)
	}
	t := time.NewTimer(max(delay, eventFallback))
	defer t.Stop()
	select {
	case <-wake:
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}
