package report

import (
	"io"
	"strings"

	"github.com/jedib0t/go-pretty/v6/table"
	"github.com/jedib0t/go-pretty/v6/text"
)

// renderBoxed writes the box formats (text, unicode, unicodeAlt) of a table whose
// cells are all single-line plain text exactly as go-pretty's Render does with style
// (the property test in boxed_test.go compares the two on random tables). It exists
// because go-pretty, which handles multi-line cells, escape sequences and much more,
// spends about 12 µs and 1 KiB per row: a quarter of autosnap's own CPU in `status`
// over 10 000 snapshots. It reports false, having written nothing, when a cell is not
// plain single-line text or the table has no rows; go-pretty renders those.
func renderBoxed(w io.Writer, style table.Style, t Table) (bool, error) {
	if len(t.Rows) == 0 || len(t.Columns) == 0 {
		return false, nil
	}
	n := (len(t.Rows) + 1) * len(t.Columns)
	cells, cellWidths := make([]string, 0, n), make([]int, 0, n)
	widths := make([]int, len(t.Columns))
	add := func(i int, s string) bool {
		n, ok := plainWidth(s)
		if !ok {
			return false
		}
		widths[i] = max(widths[i], n)
		cells, cellWidths = append(cells, s), append(cellWidths, n)
		return true
	}
	for i, c := range t.Columns {
		if !add(i, c.Header) {
			return false, nil
		}
	}
	for _, row := range t.Rows {
		for i, v := range row {
			if !add(i, Cell(v)) {
				return false, nil
			}
		}
	}

	b := style.Box
	h := b.Horizontal
	if h == nil {
		h = table.NewBoxStyleHorizontal(b.MiddleHorizontal)
	}
	var out strings.Builder
	rowLen := len(b.Left) + len(b.Right)
	for _, n := range widths {
		rowLen += n + len(b.PaddingLeft) + len(b.PaddingRight) + len(b.MiddleVertical)
	}
	out.Grow(rowLen * (len(t.Rows) + 4))
	line := func(left, horizontal, sep, right string) {
		out.WriteString(left)
		for i, n := range widths {
			if i > 0 {
				out.WriteString(sep)
			}
			// Every style autosnap uses draws lines with one-column characters.
			out.WriteString(strings.Repeat(horizontal, len(b.PaddingLeft)+n+len(b.PaddingRight)))
		}
		out.WriteString(right)
		out.WriteByte('\n')
	}
	row := func(r []string, rw []int) {
		out.WriteString(b.Left)
		for i, s := range r {
			if i > 0 {
				out.WriteString(b.MiddleVertical)
			}
			out.WriteString(b.PaddingLeft)
			pad := widths[i] - rw[i]
			if t.Columns[i].AlignRight {
				out.WriteString(strings.Repeat(" ", pad))
				out.WriteString(s)
			} else {
				out.WriteString(s)
				out.WriteString(strings.Repeat(" ", pad))
			}
			out.WriteString(b.PaddingRight)
		}
		out.WriteString(b.Right)
		out.WriteByte('\n')
	}
	cols := len(t.Columns)
	line(b.TopLeft, h.HeaderTop, b.TopSeparator, b.TopRight)
	row(cells[:cols], cellWidths[:cols])
	line(b.LeftSeparator, h.HeaderBottom, b.MiddleSeparator, b.RightSeparator)
	for i := cols; i < len(cells); i += cols {
		row(cells[i:i+cols], cellWidths[i:i+cols])
	}
	line(b.BottomLeft, h.RowBottom, b.BottomSeparator, b.BottomRight)
	_, err := io.WriteString(w, out.String())
	return true, err
}

// plainWidth returns the display width of s when it is plain single-line text: no
// control characters (line breaks, tabs, escape sequences), which go-pretty lays out
// itself.
func plainWidth(s string) (int, bool) {
	ascii := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f {
			return 0, false
		}
		if c >= 0x80 {
			ascii = false
		}
	}
	if ascii {
		return len(s), true
	}
	for _, r := range s {
		if r < 0x20 || r >= 0x7f && r < 0xa0 || r == '\u2028' || r == '\u2029' {
			return 0, false
		}
	}
	return text.StringWidthWithoutEscSequences(s), true
}
