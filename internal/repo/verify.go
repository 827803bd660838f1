package repo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// Fault is one problem Verify found.
type Fault struct {
	Guest string `json:"guest"`
	Point string `json:"point,omitempty"`
	Disk  string `json:"disk,omitempty"`
	// File is the damaged or missing file (absolute path).
	File    string `json:"file"`
	Problem string `json:"problem"`
}

func (f Fault) String() string { return f.File + ": " + f.Problem }

// VerifyOptions says how deep Verify looks.
type VerifyOptions struct {
	// ReadData reads every allocated block of every point through its backing chain.
	ReadData bool
	// Points limits the check to these point IDs and the points they depend on; nil
	// checks every point.
	Points []string
	// Progress, when set, is called before each point is checked.
	Progress func(p Point)
}

// Verify checks the guest's points and returns one Fault per problem, each naming the
// damaged file: every manifest readable and naming its own directory, every parent
// present, every disk file present with the format, virtual size and backing file its
// manifest records, every backing file inside the repository and present, every
// file's checksum matching, `qemu-img check` finding no corruption and, with
// ReadData, every point of every disk readable through its whole chain. The error is
// for failures to run the checks (a cancelled ctx, qemu-img missing), not for faults.
// The caller holds the guest's lock or shared lock.
func (g *Guest) Verify(ctx context.Context, opts VerifyOptions) ([]Fault, error) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return nil, fmt.Errorf("verify needs qemu-img: %w", err)
	}
	ents, err := os.ReadDir(g.Dir)
	if err != nil {
		return nil, fmt.Errorf("guest %s: %w", g.ID.Name, err)
	}
	var faults []Fault
	fault := func(p, disk, file, format string, a ...any) {
		faults = append(faults, Fault{Guest: g.ID.Name, Point: p, Disk: disk, File: file, Problem: fmt.Sprintf(format, a...)})
	}
	// During an interrupted prune the files it rebases are in flux: their backing
	// file and checksum are checked once Repair has finished it.
	inFlux := map[string]bool{}
	var rec pruneRecord
	if ok, err := g.journal().Get(pruneKey, &rec); err != nil {
		fault("", "", g.journal().Path(pruneKey), "%v", err)
	} else if ok {
		fault("", "", g.journal().Path(pruneKey), "an interrupted prune is not finished (removing %s): run autosnap backup prune (or backup) for this guest to finish it", strings.Join(rec.Plan.Remove, ", "))
		for _, st := range rec.Plan.Rebase {
			inFlux[st.Point+"/"+st.Disk] = true
		}
		for id := range rec.Plan.Reparent {
			inFlux[id] = true
		}
	}
	points := map[string]Point{}
	var order []Point
	for _, e := range ents {
		if !e.IsDir() || !ValidID(e.Name()) {
			continue
		}
		dir := filepath.Join(g.Dir, e.Name())
		p, err := readPoint(dir)
		if err != nil {
			fault(e.Name(), "", filepath.Join(dir, ManifestFile), "%v", unwrapAll(err))
			continue
		}
		points[p.ID] = p
		order = append(order, p)
	}
	sortPoints(order)
	want := map[string]bool{}
	if opts.Points != nil {
		var add func(id string)
		add = func(id string) {
			p, ok := points[id]
			if !ok || want[id] {
				return
			}
			want[id] = true
			add(p.Parent)
			for _, d := range p.Disks {
				if b, ok := backingPoint(d.Backing); ok {
					add(b)
				}
			}
		}
		for _, id := range opts.Points {
			if _, ok := points[id]; !ok {
				fault(id, "", filepath.Join(g.Dir, id), "no such point")
			}
			add(id)
		}
	}
	for _, p := range order {
		if opts.Points != nil && !want[p.ID] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return faults, err
		}
		if opts.Progress != nil {
			opts.Progress(p)
		}
		mf := filepath.Join(p.Dir, ManifestFile)
		if p.Parent != "" && !inFlux[p.ID] {
			if _, ok := points[p.Parent]; !ok {
				fault(p.ID, "", mf, "its parent point %s is missing", p.Parent)
			}
		}
		if len(p.Disks) == 0 {
			fault(p.ID, "", mf, "the manifest lists no disk")
		}
		for _, d := range p.Disks {
			path := p.Path(d)
			if d.File != d.Name+".qcow2" {
				fault(p.ID, d.Name, mf, "disk %s names file %q, want %s.qcow2", d.Name, d.File, d.Name)
				continue
			}
			if _, err := os.Stat(path); err != nil {
				fault(p.ID, d.Name, path, "missing: %v", unwrapAll(err))
				continue
			}
			info, err := imageInfo(ctx, path)
			if err != nil {
				if ctx.Err() != nil {
					return faults, ctx.Err()
				}
				fault(p.ID, d.Name, path, "unreadable image: %v", err)
				continue
			}
			if info.Format != "qcow2" {
				fault(p.ID, d.Name, path, "format %s, want qcow2", info.Format)
				continue
			}
			if info.VirtualSize != d.VirtualSize {
				fault(p.ID, d.Name, path, "virtual size %d, the manifest says %d", info.VirtualSize, d.VirtualSize)
			}
			flux := inFlux[p.ID+"/"+d.Name]
			if info.BackingFilename != d.Backing && !flux {
				fault(p.ID, d.Name, path, "backing file %q, the manifest says %q", info.BackingFilename, d.Backing)
			}
			if d.Backing != "" && !flux {
				bp, ok := backingPoint(d.Backing)
				switch {
				case !ok:
					fault(p.ID, d.Name, path, "backing file %q is not a point of this guest's directory", d.Backing)
				case points[bp].ID == "":
					fault(p.ID, d.Name, filepath.Join(p.Dir, d.Backing), "missing: backing file of %s", path)
				default:
					if _, err := os.Stat(filepath.Join(p.Dir, d.Backing)); err != nil {
						fault(p.ID, d.Name, filepath.Join(p.Dir, d.Backing), "missing: backing file of %s", path)
					}
				}
			}
			if !flux { // a file the interrupted prune rebases is compared once it is finished
				switch sum, err := sumOf(ctx, path, d.Checksum); {
				case ctx.Err() != nil:
					return faults, ctx.Err()
				case err != nil:
					fault(p.ID, d.Name, path, "%v", err)
				case sum != d.Checksum:
					fault(p.ID, d.Name, path, "checksum mismatch: the file has %s, the manifest %s: the file changed after the backup", sum, d.Checksum)
				}
			}
			if msg, err := checkImage(ctx, path); err != nil {
				return faults, err
			} else if msg != "" {
				fault(p.ID, d.Name, path, "qemu-img check: %s", msg)
			}
			if opts.ReadData {
				if _, err := qemuImg(ctx, "convert", "-n", "-f", "qcow2", path, "--target-image-opts",
					"driver=null-co,size="+strconv.FormatUint(d.VirtualSize, 10)); err != nil {
					if ctx.Err() != nil {
						return faults, ctx.Err()
					}
					fault(p.ID, d.Name, path, "reading every block through its backing chain failed: %v", err)
				}
			}
		}
	}
	return faults, nil
}

// checkImage runs `qemu-img check` on one file (not its chain) and returns what it
// found ("" when clean; leaked clusters only waste space and are not reported).
func checkImage(ctx context.Context, path string) (string, error) {
	out, err := qemuImg(ctx, "check", "-f", "qcow2", "--force-share", path)
	if err == nil {
		return "", nil
	}
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 3 {
		return "", nil
	}
	if errors.As(err, &ee) {
		return summarizeCheck(err, out), nil
	}
	return "", err
}

func unwrapAll(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// summarizeCheck keeps the first errors and the verdict of qemu-img check's report.
func summarizeCheck(err error, out []byte) string {
	var keep []string
	for _, l := range strings.Split(string(out)+"\n"+err.Error(), "\n") {
		l = strings.TrimSpace(l)
		if strings.Contains(l, "ERROR") && len(keep) < 3 || strings.Contains(l, "errors were found") {
			keep = append(keep, l)
		}
	}
	if len(keep) == 0 {
		return err.Error()
	}
	return strings.Join(keep, "; ")
}

// sumOf is the checksum of path computed as want (a manifest's checksum) was.
func sumOf(ctx context.Context, path, want string) (string, error) {
	if !knownSum(want) {
		return "", fmt.Errorf("the manifest's checksum %q is not %s:…", want, SumAlgo)
	}
	sum, err := fileSum(ctx, path)
	if err != nil {
		return "", fmt.Errorf("unreadable: %w", err)
	}
	return sum, nil
}
