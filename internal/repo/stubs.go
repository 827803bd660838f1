package repo

import (
	"context"
	"errors"
	"time"

	"github.com/autosnap/autosnap/internal/retention"
)

var errTODO = errors.New("not built yet")

// Fault is one problem Verify found.
type Fault struct {
	Guest string `json:"guest"`
	Point string `json:"point,omitempty"`
	Disk  string `json:"disk,omitempty"`
	// File is the damaged or missing file (absolute path).
	File    string `json:"file,omitempty"`
	Problem string `json:"problem"`
}

func (f Fault) String() string { return f.File + ": " + f.Problem }

// VerifyOptions says how deep Verify looks.
type VerifyOptions struct {
	// ReadData reads every block of every point through its backing chain.
	ReadData bool
	// Points limits the check to these point IDs (and the files they depend on); nil
	// checks every point.
	Points []string
}

func (g *Guest) Verify(ctx context.Context, opts VerifyOptions) ([]Fault, error) { return nil, errTODO }

func (g *Guest) RestoreDisk(ctx context.Context, point Point, disk, out, format string) error {
	return errTODO
}

type PrunePlan struct{}

func (g *Guest) PlanPrune(policy retention.GFS, now time.Time) (PrunePlan, error) {
	return PrunePlan{}, errTODO
}
func (g *Guest) Prune(ctx context.Context, plan PrunePlan) error { return errTODO }
func (g *Guest) Repair(ctx context.Context) ([]string, error)    { return nil, errTODO }
