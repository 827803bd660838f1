package backup

import (
	"context"
	"errors"
	"strings"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/repo"
)

// RepoStore is the Store of a repository opened with repo.Open.
type RepoStore struct{ R *repo.Repo }

// Tag is the first eight characters of the repository's random ID.
func (s RepoStore) Tag() string {
	if len(s.R.ID) > 8 {
		return s.R.ID[:8]
	}
	return s.R.ID
}

// Guest implements Store.
func (s RepoStore) Guest(g driver.Guest, driverName string) (GuestStore, error) {
	uuid := g.UUID
	if uuid == "" {
		uuid = g.Key()
	}
	rg, err := s.R.Guest(repo.GuestID{UUID: uuid, Name: g.Name, Node: g.Node, Driver: driverName})
	if err != nil {
		return nil, err
	}
	return repoGuest{rg}, nil
}

type repoGuest struct{ g *repo.Guest }

func (r repoGuest) Lock(ctx context.Context) (func(), error)     { return r.g.Lock(ctx) }
func (r repoGuest) Repair(ctx context.Context) ([]string, error) { return r.g.Repair(ctx) }

func (r repoGuest) Points() ([]Point, error) {
	pts, err := r.g.Points()
	if err != nil {
		return nil, err
	}
	out := make([]Point, len(pts))
	for i, p := range pts {
		out[i] = FromRepoPoint(p)
	}
	return out, nil
}

// FromRepoPoint is the engine's view of a repository point.
func FromRepoPoint(p repo.Point) Point {
	pt := Point{
		PointInfo: PointInfo{ID: p.ID, Level: driver.BackupLevel(p.Level), Chain: p.Chain, Checkpoint: p.Checkpoint},
		Dir:       p.Dir, Started: p.Started, Finished: p.Finished, Files: map[string]string{}, Config: p.Config,
	}
	for _, d := range p.Disks {
		pt.Disks = append(pt.Disks, DiskInfo{Name: d.Name, VirtualSize: d.VirtualSize})
		pt.Files[d.Name] = p.Path(d)
	}
	return pt
}

func (r repoGuest) Begin(m Meta) (Pending, error) {
	p, err := r.g.Begin(toManifest(m))
	if err != nil {
		return nil, err
	}
	return repoPending{p}, nil
}

func toManifest(m Meta) repo.Manifest {
	rm := repo.Manifest{
		ID: m.ID, Level: string(m.Level), Chain: m.Chain, Parent: m.Parent, Checkpoint: m.Checkpoint,
		Started: m.Started, Finished: m.Finished, Consistency: string(m.Consistency), Config: m.Config,
		AutosnapVersion: m.AutosnapVersion,
	}
	for _, d := range m.Disks {
		rm.Disks = append(rm.Disks, repo.DiskManifest{Name: d.Name, Format: d.Format, VirtualSize: d.VirtualSize, FullReason: d.FullReason})
	}
	return rm
}

type repoPending struct{ p *repo.Pending }

func (r repoPending) ID() string                 { return r.p.ID() }
func (r repoPending) File(disk string) string    { return r.p.File(disk) }
func (r repoPending) Backing(disk string) string { return r.p.Backing(disk) }
func (r repoPending) Abort() error               { return r.p.Abort() }

func (r repoPending) Commit(ctx context.Context, m Meta) (Point, error) {
	p, err := r.p.Commit(ctx, toManifest(m))
	if err != nil {
		return Point{}, err
	}
	return FromRepoPoint(p), nil
}

// DryRunStore is the Store of a dry run: it reads the repository in dir when there is
// one and never creates it or a guest directory in it. A guest the repository does not
// hold (or a missing repository) has no points.
func DryRunStore(dir string) (Store, error) {
	r, err := repo.OpenExisting(dir)
	if errors.Is(err, repo.ErrNotRepo) {
		return dryStore{}, nil
	}
	if err != nil {
		return nil, err
	}
	return dryStore{RepoStore{r}}, nil
}

type dryStore struct{ rs RepoStore }

func (s dryStore) Tag() string {
	if s.rs.R == nil {
		return ""
	}
	return s.rs.Tag()
}

func (s dryStore) Guest(g driver.Guest, driverName string) (GuestStore, error) {
	if s.rs.R == nil {
		return emptyGuest{}, nil
	}
	gs, err := s.rs.R.Guests()
	if err != nil {
		return nil, err
	}
	for _, rg := range gs {
		if g.UUID != "" && strings.EqualFold(rg.ID.UUID, g.UUID) || g.UUID == "" && rg.ID.UUID == g.Key() {
			return repoGuest{rg}, nil
		}
	}
	return emptyGuest{}, nil
}

// emptyGuest is a guest without a directory yet (dry runs only).
type emptyGuest struct{}

func (emptyGuest) Lock(context.Context) (func(), error)     { return func() {}, nil }
func (emptyGuest) Repair(context.Context) ([]string, error) { return nil, nil }
func (emptyGuest) Points() ([]Point, error)                 { return nil, nil }
func (emptyGuest) Begin(Meta) (Pending, error) {
	return nil, errors.New("a dry run writes no point")
}
