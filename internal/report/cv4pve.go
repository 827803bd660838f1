package report

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// This file renders output exactly as cv4pve-autosnap 2.x prints it (its tables come
// from Corsinvest.ProxmoxVE.Api.Shared TableGenerator), for autosnap's cv4pve mode.
// Nothing here is used by the native output.

// CV4PVEFormats are the status output formats cv4pve-autosnap knows, as it spells them.
var CV4PVEFormats = []Format{FormatText, FormatHTML, FormatMarkdown, FormatJSON, FormatJSONPretty}

// RenderCV4PVE writes the table as cv4pve-autosnap's TableGenerator does: every column
// left-aligned and as wide as its widest cell, text with +---+ dividers, Markdown with a
// |---| line, HTML on one line without a trailing newline, and JSON (compact or indented
// by 2) as an array of objects keyed by column header, keys in column order, without a
// trailing newline. Cells in the text formats are shown with Cell; in JSON they keep
// their type (a number stays a number).
func RenderCV4PVE(w io.Writer, f Format, headers []string, rows [][]any) error {
	for i, r := range rows {
		if len(r) != len(headers) {
			return fmt.Errorf("report: row %d has %d cells, table has %d columns", i, len(r), len(headers))
		}
	}
	var s string
	switch f {
	case FormatText:
		s = cvText(headers, rows)
	case FormatMarkdown:
		s = cvMarkdown(headers, rows)
	case FormatHTML:
		s = cvHTML(headers, rows)
	case FormatJSON, FormatJSONPretty:
		var err error
		if s, err = cvJSON(headers, rows, f == FormatJSONPretty); err != nil {
			return err
		}
	default:
		return fmt.Errorf("output %s does not exist in cv4pve-autosnap: use Text, Html, Markdown, Json or JsonPretty", f)
	}
	_, err := io.WriteString(w, s)
	return err
}

// cvLine is one row as .NET's string.Format("| {0,-w0} | {1,-w1} |") writes it.
func cvLine(cells []string, widths []int) string {
	var b strings.Builder
	b.WriteString("|")
	for i, c := range cells {
		b.WriteString(" ")
		b.WriteString(c)
		b.WriteString(strings.Repeat(" ", max(0, widths[i]-utf8.RuneCountInString(c))))
		b.WriteString(" |")
	}
	return b.String()
}

func cvCells(headers []string, rows [][]any) (head []string, body [][]string, widths []int) {
	widths = make([]int, len(headers))
	for i, h := range headers {
		widths[i] = utf8.RuneCountInString(h)
	}
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, v := range r {
			cells[i] = cvCell(v)
			widths[i] = max(widths[i], utf8.RuneCountInString(cells[i]))
		}
		body = append(body, cells)
	}
	return headers, body, widths
}

// cvCell is .NET's (value + string.Empty): numbers in invariant form, nil empty.
func cvCell(v any) string {
	if b, ok := v.(bool); ok {
		if b {
			return "True"
		}
		return "False"
	}
	return Cell(v)
}

var notPipe = regexp.MustCompile(`[^|]`)

func cvText(headers []string, rows [][]any) string {
	head, body, widths := cvCells(headers, rows)
	h := cvLine(head, widths)
	div := strings.ReplaceAll(notPipe.ReplaceAllString(h, "-"), "|", "+")
	var b strings.Builder
	b.WriteString(div + "\n" + h + "\n" + div + "\n")
	for _, r := range body {
		b.WriteString(cvLine(r, widths) + "\n")
	}
	b.WriteString(div + "\n")
	return b.String()
}

func cvMarkdown(headers []string, rows [][]any) string {
	head, body, widths := cvCells(headers, rows)
	h := cvLine(head, widths)
	var b strings.Builder
	b.WriteString(h + "\n" + notPipe.ReplaceAllString(h, "-") + "\n")
	for _, r := range body {
		b.WriteString(cvLine(r, widths) + "\n")
	}
	return b.String()
}

// cvHTML writes cells as they are, trimmed and not escaped, as cv4pve does.
func cvHTML(headers []string, rows [][]any) string {
	row := func(tag string, cells []string) string {
		var b strings.Builder
		b.WriteString("<tr>")
		for _, c := range cells {
			fmt.Fprintf(&b, "<%s style='border: 1px solid black;'>%s</%s>", tag, strings.TrimSpace(c), tag)
		}
		b.WriteString("</tr>")
		return b.String()
	}
	head, body, _ := cvCells(headers, rows)
	var b strings.Builder
	b.WriteString("<table style='width: 100%;border-collapse: collapse;border: 1px solid black;'>")
	b.WriteString("<thead>" + row("th", head) + "</thead><tbody>")
	for _, r := range body {
		b.WriteString(row("td", r))
	}
	b.WriteString("</tbody></table>")
	return b.String()
}

// cvJSON is Newtonsoft.Json's SerializeObject of a list of dictionaries: keys in
// column order, no HTML escaping, Formatting.Indented = 2 spaces and "key": value.
func cvJSON(headers []string, rows [][]any, pretty bool) (string, error) {
	var buf bytes.Buffer
	buf.WriteByte('[')
	for i, r := range rows {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.WriteByte('{')
		for j, h := range headers {
			if j > 0 {
				buf.WriteByte(',')
			}
			if err := encodeValue(&buf, h); err != nil {
				return "", err
			}
			buf.WriteByte(':')
			if err := encodeValue(&buf, r[j]); err != nil {
				return "", fmt.Errorf("report: row %d, column %q: %w", i, h, err)
			}
		}
		buf.WriteByte('}')
	}
	buf.WriteByte(']')
	if !pretty {
		return buf.String(), nil
	}
	var ind bytes.Buffer
	if err := json.Indent(&ind, buf.Bytes(), "", "  "); err != nil {
		return "", err
	}
	return ind.String(), nil
}

// CV4PVETimeSpan formats d as .NET's TimeSpan.ToString() ("c"): [-][d.]hh:mm:ss, then
// .fffffff (100 ns ticks) unless the fraction is zero, e.g. 00:00:00.8560000.
func CV4PVETimeSpan(d time.Duration) string {
	sign := ""
	if d < 0 {
		sign, d = "-", -d
	}
	ticks := int64(d / 100)
	const perSec = int64(time.Second / 100)
	frac := ticks % perSec
	secs := ticks / perSec
	days, secs := secs/86400, secs%86400
	s := sign
	if days > 0 {
		s += strconv.FormatInt(days, 10) + "."
	}
	s += fmt.Sprintf("%02d:%02d:%02d", secs/3600, secs/60%60, secs%60)
	if frac != 0 {
		s += fmt.Sprintf(".%07d", frac)
	}
	return s
}

// CV4PVEBytes formats a size as cv4pve's FormatHelper.FromBytes: decimal units (1000)
// and the .NET format "0.##", e.g. "0 B", "1.5 GB", "107.37 GB".
func CV4PVEBytes(n uint64) string {
	units := []string{"B", "KB", "MB", "GB", "TB", "PB", "EB"}
	size := float64(n)
	i := 0
	for size >= 1000 && i < len(units)-1 {
		size /= 1000
		i++
	}
	return cvNumber(size, 2) + " " + units[i]
}

// cvNumber formats x with at most decimals decimals and no trailing zeros, rounding
// half away from zero as .NET's custom numeric formats do.
func cvNumber(x float64, decimals int) string {
	p := math.Pow10(decimals)
	x = math.Round(x*p) / p
	return strconv.FormatFloat(x, 'f', -1, 64)
}

// CV4PVEStorageRow is one line of the storage table cv4pve-autosnap's snap prints.
type CV4PVEStorageRow struct {
	Key   string // node/storage
	Type  string
	Valid string  // Ok, Ko or n/a
	Used  float64 // percent, 0-100
	Size  uint64
	Usage uint64
}

// cv4pveStorageWidths are the PadLeft widths of the storage table's columns.
var cv4pveStorageWidths = []int{25, 10, 10, 10, 12, 12}

// CV4PVEStorageTable writes the storage table: each cell right-aligned (PadLeft) to
// 25, 10, 10, 10, 12 and 12 characters, longer cells unpadded, one line per storage
// after the header line.
func CV4PVEStorageTable(w io.Writer, rows []CV4PVEStorageRow) error {
	line := func(cells ...string) string {
		var b strings.Builder
		for i, c := range cells {
			b.WriteString(strings.Repeat(" ", max(0, cv4pveStorageWidths[i]-utf8.RuneCountInString(c))))
			b.WriteString(c)
		}
		return b.String() + "\n"
	}
	var b strings.Builder
	b.WriteString(line("Storage", "Type", "Valid", "Used % ", "Disk Size", "Disk Usage"))
	for _, r := range rows {
		// Math.Round(x, 1) rounds half to even.
		used := strconv.FormatFloat(math.RoundToEven(r.Used*10)/10, 'f', -1, 64)
		b.WriteString(line(r.Key, r.Type, r.Valid, used, CV4PVEBytes(r.Size), CV4PVEBytes(r.Usage)))
	}
	_, err := io.WriteString(w, b.String())
	return err
}
