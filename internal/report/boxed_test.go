package report

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// goPretty renders t in f through go-pretty alone, as before renderBoxed.
func goPretty(t *testing.T, f Format, tb Table) string {
	t.Helper()
	var buf bytes.Buffer
	if err := renderTableWith(&buf, f, tb, false); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// cellPool mixes what status tables hold with what needs care: empty cells, wide
// (CJK) and combining runes, box characters, markup, and values of other types.
var cellPool = []any{
	"", "a", "pve1", "101", "web-01", "autodaily260929020000", "no-parent", "yes",
	"日本語", "e\u0301", "│┼─", "<b>&", "|", "a b  c", " lead", "trail ", "ümlaut",
	true, false, nil, 42, []string{"x", "y"}, time.Date(2026, 9, 29, 2, 0, 0, 0, time.UTC),
}

// TestRenderBoxedMatchesGoPretty is the property renderBoxed promises: on random
// tables of single-line cells its output is byte for byte go-pretty's, in every box
// format, whatever the alignment.
func TestRenderBoxedMatchesGoPretty(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := range 3000 {
		cols := 1 + rng.IntN(6)
		tb := Table{}
		for range cols {
			h := cellPool[rng.IntN(len(cellPool))]
			hs, _ := h.(string)
			tb.Columns = append(tb.Columns, Column{Header: strings.ToUpper(hs), Key: "k", AlignRight: rng.IntN(3) == 0})
		}
		for range 1 + rng.IntN(8) {
			row := make([]any, cols)
			for i := range row {
				row[i] = cellPool[rng.IntN(len(cellPool))]
			}
			tb.Rows = append(tb.Rows, row)
		}
		for _, f := range []Format{FormatText, FormatUnicode, FormatUnicodeAlt} {
			var fast bytes.Buffer
			done, err := renderBoxed(&fast, tableStyle(f), tb)
			if err != nil || !done {
				t.Fatalf("table %d (%s): renderBoxed declined a plain table (done %v, err %v)", iter, f, done, err)
			}
			if want := goPretty(t, f, tb); fast.String() != want {
				t.Fatalf("table %d (%s): renderBoxed differs from go-pretty:\n%s\nwant:\n%s", iter, f, fast.String(), want)
			}
		}
	}
}

// TestRenderBoxedDeclines: what go-pretty lays out itself (line breaks, tabs,
// escape sequences, other control characters) and tables without rows are left to it,
// so Render's output for them is go-pretty's.
func TestRenderBoxedDeclines(t *testing.T) {
	cols := []Column{{Header: "A"}, {Header: "B"}}
	for _, tb := range []Table{
		{Columns: cols},
		{Columns: cols, Rows: [][]any{{"two\nlines", "x"}}},
		{Columns: cols, Rows: [][]any{{"tab\there", "x"}}},
		{Columns: cols, Rows: [][]any{{"\x1b[31mred\x1b[0m", "x"}}},
		{Columns: cols, Rows: [][]any{{"cr\r", "x"}}},
		{Columns: cols, Rows: [][]any{{"nel\u0085", "x"}}},
		{Columns: []Column{{Header: "multi\nline"}}, Rows: [][]any{{"x"}}},
	} {
		var buf bytes.Buffer
		if done, _ := renderBoxed(&buf, tableStyle(FormatText), tb); done || buf.Len() != 0 {
			t.Errorf("renderBoxed took %q (wrote %q); go-pretty must lay it out", tb.Rows, buf.String())
		}
		var got bytes.Buffer
		if err := Render(&got, FormatText, tb); err != nil {
			t.Fatal(err)
		}
		if want := goPretty(t, FormatText, tb); got.String() != want {
			t.Errorf("Render of %q:\n%s\nwant go-pretty's:\n%s", tb.Rows, got.String(), want)
		}
	}
}
