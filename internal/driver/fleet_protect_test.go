package driver

import "context"

func (r *recorder) SetProtected(_ context.Context, g Guest, name string, protected bool) error {
	return r.rec("SetProtected", g, name, protected)
}
