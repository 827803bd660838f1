package driver

import (
	"context"
	"sync"
)

// ListingScope marks one read-only pass over many guests (engine.Status): a driver may
// read state it would otherwise read once per guest — such as which of its journal
// records exist — once for the whole pass. Such a value is as current as the pass
// itself, which no lock orders against changes anyway. Commands that change a guest
// never run in a scope: what they read must be read under the guest's lock.
type ListingScope struct {
	mu   sync.Mutex
	vals map[any]*scoped
}

type scoped struct {
	once sync.Once
	v    any
	err  error
}

type scopeKey struct{}

// WithListingScope returns ctx carrying a new ListingScope.
func WithListingScope(ctx context.Context) context.Context {
	return context.WithValue(ctx, scopeKey{}, &ListingScope{vals: map[any]*scoped{}})
}

// InScope returns the value of key in ctx's ListingScope, calling load the first time
// key is asked for in that scope (concurrent callers wait for it). ok is false, and
// load is not called, when ctx carries no scope.
func InScope[T any](ctx context.Context, key any, load func() (T, error)) (v T, ok bool, err error) {
	s, _ := ctx.Value(scopeKey{}).(*ListingScope)
	if s == nil {
		return v, false, nil
	}
	s.mu.Lock()
	e := s.vals[key]
	if e == nil {
		e = &scoped{}
		s.vals[key] = e
	}
	s.mu.Unlock()
	e.once.Do(func() { e.v, e.err = load() })
	if e.err != nil {
		return v, true, e.err
	}
	return e.v.(T), true, nil
}
