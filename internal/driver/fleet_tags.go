package driver

import (
	"context"
	"errors"
)

// LoadTags implements TagLoader: each member reads the tags of its own guests (members
// that list tags with their guests already did).
func (f *Fleet) LoadTags(ctx context.Context, guests []Guest) error {
	idx := map[Driver][]int{}
	var order []Driver
	for i, g := range guests {
		d, err := f.member(g)
		if err != nil {
			return err
		}
		if _, ok := idx[d]; !ok {
			order = append(order, d)
		}
		idx[d] = append(idx[d], i)
	}
	var errs []error
	for _, d := range order {
		sub := make([]Guest, len(idx[d]))
		for j, i := range idx[d] {
			sub[j] = guests[i]
		}
		if err := LoadTags(ctx, d, sub); err != nil {
			errs = append(errs, err)
		}
		for j, i := range idx[d] {
			guests[i].Tags = sub[j].Tags
		}
	}
	return errors.Join(errs...)
}

var _ TagLoader = (*Fleet)(nil)
