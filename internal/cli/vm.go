package cli

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/report"
	"github.com/autosnap/autosnap/internal/selector"
)

func newVMCommand(g *GlobalOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "vm", Short: "Guests the connection sees"}
	cmd.AddCommand(newVMListCommand(g), newVMTagCommand(g, true), newVMTagCommand(g, false))
	return cmd
}

// VMListOptions has no options of its own: --vmid filters, -o formats.
type VMListOptions struct{}

func newVMListCommand(g *GlobalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List every guest (or those --vmid selects): name, id, uuid, node, state, kind, template, tags",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runVMList(cmd.Context(), g, g.stdout)
		},
	}
}

var vmColumns = []report.Column{
	{Header: "NODE", Key: "node"},
	{Header: "ID", Key: "vmid", AlignRight: true},
	{Header: "NAME", Key: "name"},
	{Header: "UUID", Key: "uuid"},
	{Header: "STATE", Key: "state"},
	{Header: "KIND", Key: "kind"},
	{Header: "TEMPLATE", Key: "template"},
	{Header: "TAGS", Key: "tags"},
}

func runVMList(ctx context.Context, g *GlobalOptions, out io.Writer) error {
	d, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer d.Close()
	guests, err := g.selectGuests(ctx, d, true)
	if err != nil {
		return err
	}
	if err := g.ensureTags(ctx, d, guests); err != nil {
		return err
	}
	t := report.Table{Columns: vmColumns}
	for _, gu := range guests {
		var id any
		if gu.ID > 0 {
			id = gu.ID
		}
		tags := gu.Tags
		if tags == nil {
			tags = []string{}
		}
		t.Rows = append(t.Rows, []any{gu.Node, id, gu.Name, gu.UUID, string(gu.State), string(gu.Kind), gu.Template, tags})
	}
	return report.Render(out, g.format(), t)
}

func newVMTagCommand(g *GlobalOptions, add bool) *cobra.Command {
	use, short := "tag GUEST TAG...", "Add tags to guests (stored in the domain's <metadata>, used by --vmid @tag-NAME)"
	if !add {
		use, short = "untag GUEST TAG...", "Remove tags from guests"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Long: short + `.

GUEST is a selection like --vmid (a name, id, UUID, @all …). Tags are
case-insensitive words of letters, digits, '-', '_' and '.'.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVMTag(cmd.Context(), g, args[0], args[1:], add)
		},
	}
}

func validTag(t string) bool {
	if t == "" {
		return false
	}
	for _, r := range t {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

func runVMTag(ctx context.Context, g *GlobalOptions, target string, tags []string, add bool) error {
	for _, t := range tags {
		if !validTag(t) {
			return usage(fmt.Errorf("tag %q: use letters, digits, '-', '_' and '.'", t))
		}
	}
	sel, err := selector.Parse(target)
	if err != nil {
		return usage(err)
	}
	d, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer d.Close()
	tagger, ok := d.(driver.Tagger)
	if !ok {
		return usage(fmt.Errorf("the %s driver has its own tags; set them in the hypervisor", d.Name()))
	}
	lctx, cancel := context.WithTimeout(ctx, g.timeout())
	all, err := d.Guests(lctx)
	cancel()
	if err != nil {
		return err
	}
	guests, err := g.pick(ctx, d, "GUEST", sel, all)
	if err != nil {
		return err
	}
	// The new tags are computed from the current ones, which must be read first.
	if err := g.ensureTags(ctx, d, guests); err != nil {
		return err
	}
	for _, gu := range guests {
		next := slices.Clone(gu.Tags)
		for _, t := range tags {
			i := slices.IndexFunc(next, func(x string) bool { return strings.EqualFold(x, t) })
			switch {
			case add && i < 0:
				next = append(next, t)
			case !add && i >= 0:
				next = slices.Delete(next, i, i+1)
			}
		}
		if g.DryRun {
			fmt.Fprintf(g.stdout, "Dry run: %s tags would be %s\n", gu.Name, strings.Join(next, ","))
			continue
		}
		tctx, cancel := context.WithTimeout(ctx, g.timeout())
		err := tagger.SetTags(tctx, gu, next)
		cancel()
		if err != nil {
			return err
		}
		fmt.Fprintf(g.stdout, "%s: tags %s\n", gu.Name, strings.Join(next, ","))
	}
	return nil
}
