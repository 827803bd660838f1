package web

import "testing"

// TestHubSlowSubscriber: a subscriber that does not read loses events past its
// buffer instead of blocking the publisher (a job); others still get every event.
func TestHubSlowSubscriber(t *testing.T) {
	var h Hub
	slow, cancelSlow := h.Subscribe()
	fast, cancelFast := h.Subscribe()
	got := make(chan int)
	go func() {
		n := 0
		for range fast {
			n++
		}
		got <- n
	}()
	for i := range 200 {
		h.Publish(Event{Type: "guest", JobID: int64(i)})
	}
	if h.Subscribers() != 2 {
		t.Fatalf("subscribers %d", h.Subscribers())
	}
	cancelFast()
	cancelFast() // twice is harmless
	if n := <-got; n < 64 {
		t.Errorf("reading subscriber got %d events", n)
	}
	n := 0
	for len(slow) > 0 {
		<-slow
		n++
	}
	if n != 64 {
		t.Errorf("slow subscriber holds %d events, want its buffer of 64", n)
	}
	cancelSlow()
	if _, open := <-slow; open {
		t.Error("channel open after cancel")
	}
	if h.Subscribers() != 0 {
		t.Errorf("subscribers %d after cancel", h.Subscribers())
	}
}
