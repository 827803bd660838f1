package cli

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/driver"
)

// SnapshotEditOptions are the flags of `snapshot edit`.
type SnapshotEditOptions struct {
	Description string
	Rename      string
}

func newSnapshotEditCommand(g *GlobalOptions) *cobra.Command {
	o := &SnapshotEditOptions{}
	cmd := &cobra.Command{
		Use:   "edit VM NAME [--description D] [--rename NEW]",
		Short: "Change a snapshot's description or name (metadata only)",
		Long: `Change a snapshot's description or name; no file changes. Any description
but exactly what autosnap writes (e.g. "autosnap") makes the snapshot a user
snapshot that retention never touches; "autosnap" hands it to retention. A rename
keeps the snapshot's files, its children follow it. The consistency the
snapshot recorded (its "consistency:" line) is kept unless the new
description states one.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSnapshotEdit(cmd.Context(), g, o, cmd.Flags().Changed("description"), args[0], args[1])
		},
	}
	cmd.Flags().StringVar(&o.Description, "description", "", "new description")
	cmd.Flags().StringVar(&o.Rename, "rename", "", "new name")
	return cmd
}

func runSnapshotEdit(ctx context.Context, g *GlobalOptions, o *SnapshotEditOptions, descSet bool, vm, name string) error {
	if !descSet && o.Rename == "" {
		return usage(errors.New("nothing to change: give --description and/or --rename"))
	}
	var opts driver.EditOptions
	if descSet {
		opts.Description = &o.Description
	}
	opts.Rename = o.Rename
	s, err := g.changeGuest(ctx, vm)
	if err != nil {
		return err
	}
	defer s.Close()
	ed, err := capability[driver.SnapshotEditor](s, "edit snapshots")
	if err != nil {
		return err
	}
	if opts.Description != nil && !statesConsistency(*opts.Description) {
		// The recorded consistency is a fact about the data, not part of what the
		// user rewrites: carry it over.
		sn, _, err := s.findSnapshot(ctx, g, name)
		if err != nil {
			return err
		}
		d := withConsistency(*opts.Description, sn.Consistency)
		opts.Description = &d
	}
	if g.DryRun {
		fmt.Fprintf(g.messages(), "Dry run: snapshot %s of %s would be edited\n", name, s.guest.Name)
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	if err := ed.EditSnapshot(cctx, s.guest, name, opts); err != nil {
		return err
	}
	what := "edited"
	if o.Rename != "" && o.Rename != name {
		what = "renamed to " + o.Rename
	}
	return g.printActions(s.guest.Name, [][2]string{{name, what}})
}

func newSnapshotRedefineCommand(g *GlobalOptions) *cobra.Command {
	var current bool
	cmd := &cobra.Command{
		Use:   "redefine VM FILE.xml [--current]",
		Short: "Record a snapshot's metadata from snapshot dumpxml output (virsh snapshot-create --redefine)",
		Long: `Record (or replace) a snapshot's metadata from XML written by snapshot dumpxml,
without touching any file: to move a snapshot hierarchy to another host, dump
every snapshot there and redefine them here parents first (snapshot list --tree
shows the order), with --current for the one that was current. The guest must
have the UUID recorded in the XML and its image files must be where the XML
says. FILE "-" reads standard input.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var b []byte
			var err error
			if args[1] == "-" {
				b, err = io.ReadAll(cmd.InOrStdin())
			} else {
				b, err = os.ReadFile(args[1])
			}
			if err != nil {
				return usage(err)
			}
			// Only the name is read here; the driver validates the rest.
			var x struct {
				XMLName xml.Name `xml:"domainsnapshot"`
				Name    string   `xml:"name"`
			}
			if err := xml.Unmarshal(b, &x); err != nil || x.Name == "" {
				return usage(fmt.Errorf("%s is not a snapshot XML from snapshot dumpxml: %v", args[1], err))
			}
			s, err := g.changeGuest(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer s.Close()
			xr, err := capability[driver.SnapshotXMLer](s, "redefine snapshots")
			if err != nil {
				return err
			}
			if g.DryRun {
				fmt.Fprintf(g.messages(), "Dry run: snapshot %s of %s would be redefined\n", x.Name, s.guest.Name)
				return nil
			}
			cctx, cancel := context.WithTimeout(cmd.Context(), g.timeout())
			defer cancel()
			if err := xr.RedefineSnapshot(cctx, s.guest, string(b), current); err != nil {
				return err
			}
			return g.printActions(s.guest.Name, [][2]string{{x.Name, "redefined"}})
		},
	}
	cmd.Flags().BoolVar(&current, "current", false, "make the snapshot current")
	return cmd
}
