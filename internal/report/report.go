// Package report renders command output (status tables, job summaries) in
// the formats selected with -o/--output: the table formats of
// cv4pve-autosnap (text, unicode, unicodeAlt, markdown, html), JSON, and CSV.
//
// Output is never coloured, so it is the same on a terminal and in a pipe.
package report

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jedib0t/go-pretty/v6/table"
	"github.com/jedib0t/go-pretty/v6/text"
)

// Format is an output format.
type Format string

// Output formats. ParseFormat also accepts cv4pve's spellings (Text, Html,
// Markdown, Json, JsonPretty, Unicode, UnicodeAlt) since it ignores case.
const (
	FormatText       Format = "text"       // ASCII table with +---+ borders
	FormatUnicode    Format = "unicode"    // box-drawing table, single lines
	FormatUnicodeAlt Format = "unicodeAlt" // box-drawing table, double lines
	FormatMarkdown   Format = "markdown"   // GitHub-flavoured Markdown table
	FormatHTML       Format = "html"       // <table> element
	FormatJSON       Format = "json"       // one-line JSON array of objects
	FormatJSONPretty Format = "jsonpretty" // JSON array indented by 2 spaces
	FormatCSV        Format = "csv"        // RFC 4180, header line first
)

var formats = []Format{FormatText, FormatUnicode, FormatUnicodeAlt, FormatMarkdown, FormatHTML, FormatJSON, FormatJSONPretty, FormatCSV}

// Formats returns the canonical names of all formats, for help texts and
// shell completion.
func Formats() []string {
	names := make([]string, len(formats))
	for i, f := range formats {
		names[i] = string(f)
	}
	return names
}

// ParseFormat returns the format named s, ignoring case. The error lists the
// valid names.
func ParseFormat(s string) (Format, error) {
	for _, f := range formats {
		if strings.EqualFold(s, string(f)) {
			return f, nil
		}
	}
	return "", fmt.Errorf("invalid output format %q: valid formats are %s", s, strings.Join(Formats(), ", "))
}

// Column describes one column of a Table.
type Column struct {
	// Header is the title shown in table formats and CSV, as given (it is
	// not upper-cased), e.g. "VM NAME".
	Header string
	// Key is the object key in JSON output, e.g. "vmname".
	Key string
	// AlignRight right-aligns the column in the table formats (numbers).
	AlignRight bool
}

// Table is tabular data. Every row must have exactly len(Columns) cells.
//
// In the table formats and CSV a cell is shown as follows: nil as empty,
// string as is, time.Time as "2006-01-02 15:04:05" in the time's own
// location, []string joined with ",", bool as "yes" for true and empty for
// false, and anything else with fmt.Sprint (so fmt.Stringer and error are
// honoured).
//
// In JSON a cell keeps its type: numbers stay numbers, bools stay bools,
// nil is null, time.Time is an RFC 3339 string, a []string is an array (a
// nil one is []), and any other value is encoded by encoding/json.
type Table struct {
	Columns []Column
	Rows    [][]any
}

// Render writes t to w in format f, followed by a newline.
//
// Table formats and CSV print the header line even without rows; JSON
// prints [] then. Objects in JSON have their keys in column order. HTML
// special characters are escaped in HTML output and left alone in JSON.
func Render(w io.Writer, f Format, t Table) error {
	for i, row := range t.Rows {
		if len(row) != len(t.Columns) {
			return fmt.Errorf("report: row %d has %d cells, table has %d columns", i, len(row), len(t.Columns))
		}
	}
	switch f {
	case FormatJSON, FormatJSONPretty:
		return renderJSON(w, f == FormatJSONPretty, t)
	case FormatText, FormatUnicode, FormatUnicodeAlt, FormatMarkdown, FormatHTML, FormatCSV:
		return renderTable(w, f, t)
	}
	return fmt.Errorf("report: unknown format %q", f)
}

func renderTable(w io.Writer, f Format, t Table) error {
	return renderTableWith(w, f, t, true)
}

// renderTableWith renders t with go-pretty, or with renderBoxed when boxed is set and
// it can.
func renderTableWith(w io.Writer, f Format, t Table, boxed bool) error {
	style := tableStyle(f)
	if boxed && (f == FormatText || f == FormatUnicode || f == FormatUnicodeAlt) {
		if done, err := renderBoxed(w, style, t); done {
			return err
		}
	}
	tw := table.NewWriter()

	header := make(table.Row, len(t.Columns))
	configs := make([]table.ColumnConfig, len(t.Columns))
	for i, c := range t.Columns {
		header[i] = c.Header
		// Explicit alignment: go-pretty would otherwise right-align every
		// column of an empty table, taking it for numeric.
		align := text.AlignLeft
		if c.AlignRight {
			align = text.AlignRight
		}
		configs[i] = table.ColumnConfig{Number: i + 1, Align: align, AlignHeader: align}
	}
	tw.AppendHeader(header)
	tw.SetColumnConfigs(configs)
	for _, row := range t.Rows {
		cells := make(table.Row, len(row))
		for i, v := range row {
			if f == FormatMarkdown {
				cells[i] = markdownEscape(Cell(v))
			} else {
				cells[i] = Cell(v)
			}
		}
		tw.AppendRow(cells)
	}

	tw.SetStyle(style)

	var s string
	switch f {
	case FormatMarkdown:
		s = tw.RenderMarkdown()
	case FormatHTML:
		s = tw.RenderHTML()
	case FormatCSV:
		s = tw.RenderCSV()
	default:
		s = tw.Render()
	}
	_, err := io.WriteString(w, s+"\n")
	return err
}

// tableStyle is go-pretty's style for the table formats, never coloured.
func tableStyle(f Format) table.Style {
	var style table.Style
	switch f {
	case FormatUnicode:
		style = table.StyleLight
	case FormatUnicodeAlt:
		style = table.StyleDouble
	default:
		// Markdown, HTML and CSV ignore the box but honour Format and HTML.
		style = table.StyleDefault
	}
	style.Format.Header = text.FormatDefault // keep the header as given
	style.Color = table.ColorOptions{}
	style.HTML.ConvertColorsToSpans = false
	return style
}

// markdownCell escapes what Markdown would otherwise interpret in a table cell: a
// backslash (so that the \| go-pretty writes for '|' stays an escaped pipe and does not
// end the cell), '<' (raw HTML such as <b> or a <script> in a description) and '&'
// (entities such as &lt;). go-pretty then escapes '|' and turns line breaks into <br/>.
var markdownCell = strings.NewReplacer(`\`, `\\`, "<", `\<`, "&", `\&`)

func markdownEscape(s string) string { return markdownCell.Replace(s) }

// Cell returns the text shown for v in the table formats and CSV (see
// Table).
func Cell(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	case time.Time:
		return v.Format(time.DateTime)
	case []string:
		return strings.Join(v, ",")
	case bool:
		if v {
			return "yes"
		}
		return ""
	}
	return fmt.Sprint(v)
}

func renderJSON(w io.Writer, pretty bool, t Table) error {
	// Objects are assembled by hand because encoding/json sorts map keys and
	// the columns' order is the one users expect.
	var buf bytes.Buffer
	buf.WriteByte('[')
	for i, row := range t.Rows {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.WriteByte('{')
		for j, c := range t.Columns {
			if j > 0 {
				buf.WriteByte(',')
			}
			if err := encodeValue(&buf, c.Key); err != nil {
				return err
			}
			buf.WriteByte(':')
			v := row[j]
			if ss, ok := v.([]string); ok && ss == nil {
				v = []string{} // an empty list, not "no value"
			}
			if err := encodeValue(&buf, v); err != nil {
				return fmt.Errorf("report: row %d, column %q: %w", i, c.Key, err)
			}
		}
		buf.WriteByte('}')
	}
	buf.WriteByte(']')
	return writeJSON(w, pretty, buf.Bytes())
}

// encodeValue appends the compact JSON encoding of v to buf, without HTML
// escaping (<, >, & are fine on a terminal and in files).
func encodeValue(buf *bytes.Buffer, v any) error {
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return err
	}
	buf.Truncate(buf.Len() - 1) // Encode's newline
	return nil
}

func writeJSON(w io.Writer, pretty bool, compact []byte) error {
	out := compact
	if pretty {
		var buf bytes.Buffer
		if err := json.Indent(&buf, compact, "", "  "); err != nil {
			return err
		}
		out = buf.Bytes()
	}
	out = append(out, '\n')
	_, err := w.Write(out)
	return err
}

// JSON writes v to w as JSON followed by a newline: compact, or indented by
// 2 spaces if pretty. HTML characters are not escaped; map keys are sorted
// and struct fields keep their order, as with encoding/json.
func JSON(w io.Writer, pretty bool, v any) error {
	var buf bytes.Buffer
	if err := encodeValue(&buf, v); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	return writeJSON(w, pretty, buf.Bytes())
}
