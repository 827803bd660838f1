package web

import "sync"

// Hub fans job events out to subscribers; Backends may embed it to implement
// Subscribe. A subscriber that falls 64 events behind misses events rather than
// blocking the publisher. The zero Hub is ready to use.
type Hub struct {
	mu   sync.Mutex
	subs map[chan Event]struct{}
}

// Publish delivers ev to every subscriber that has room for it.
func (h *Hub) Publish(ev Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.subs {
		select {
		case c <- ev:
		default:
		}
	}
}

// Subscribe returns a channel of future events and the function that ends the
// subscription (and closes the channel).
func (h *Hub) Subscribe() (<-chan Event, func()) {
	c := make(chan Event, 64)
	h.mu.Lock()
	if h.subs == nil {
		h.subs = map[chan Event]struct{}{}
	}
	h.subs[c] = struct{}{}
	h.mu.Unlock()
	var once sync.Once
	return c, func() {
		once.Do(func() {
			h.mu.Lock()
			delete(h.subs, c)
			h.mu.Unlock()
			close(c)
		})
	}
}

// Subscribers counts the open subscriptions (tests wait for a page to connect).
func (h *Hub) Subscribers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}
