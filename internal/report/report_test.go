package report

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s mismatch (go test -update rewrites it)\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

var statusColumns = []Column{
	{Header: "NODE", Key: "node"},
	{Header: "VM", Key: "vmid", AlignRight: true},
	{Header: "VM NAME", Key: "vmname"},
	{Header: "TIME", Key: "time"},
	{Header: "NAME", Key: "name"},
	{Header: "DESCRIPTION", Key: "description"},
	{Header: "TAGS", Key: "tags"},
	{Header: "VM STATE", Key: "vmstate"},
	{Header: "SIZE", Key: "size", AlignRight: true},
}

var statusTable = Table{
	Columns: statusColumns,
	Rows: [][]any{
		{"kvm01", 105, "web-1", time.Date(2026, 9, 28, 7, 0, 2, 0, time.UTC), "autohourly260928070002", "cv4pve-autosnap", []string{"prod", "web"}, true, 1.5},
		{"kvm01", 2000, `db, "main"`, time.Date(2026, 9, 28, 8, 0, 0, 0, time.FixedZone("CEST", 2*3600)), "autodaily260928080000", `<b>bold</b> & "quoted" | piped`, []string{}, false, nil},
		{"kvm02", 7, "Zürich-日本", time.Time{}.AddDate(2026, 0, 0), "=SUM(A1)", "line one\nline two", []string(nil), false, -3},
	},
}

func TestRenderGolden(t *testing.T) {
	for _, f := range formats {
		t.Run(string(f), func(t *testing.T) {
			var buf bytes.Buffer
			if err := Render(&buf, f, statusTable); err != nil {
				t.Fatal(err)
			}
			golden(t, string(f), buf.Bytes())
		})
	}
}

func TestRenderEmptyGolden(t *testing.T) {
	for _, f := range formats {
		t.Run(string(f), func(t *testing.T) {
			var buf bytes.Buffer
			if err := Render(&buf, f, Table{Columns: statusColumns}); err != nil {
				t.Fatal(err)
			}
			golden(t, string(f)+"_empty", buf.Bytes())
		})
	}
}

func TestRenderEmptyJSON(t *testing.T) {
	for _, f := range []Format{FormatJSON, FormatJSONPretty} {
		var buf bytes.Buffer
		if err := Render(&buf, f, Table{Columns: statusColumns}); err != nil {
			t.Fatal(err)
		}
		if buf.String() != "[]\n" {
			t.Errorf("%s: got %q, want []", f, buf.String())
		}
	}
}

func TestRenderJSONTypesAndOrder(t *testing.T) {
	var buf bytes.Buffer
	if err := Render(&buf, FormatJSON, statusTable); err != nil {
		t.Fatal(err)
	}
	line := strings.TrimSuffix(buf.String(), "\n")
	if strings.Contains(line, "\n") {
		t.Errorf("compact JSON spans several lines: %q", buf.String())
	}
	first := `{"node":"kvm01","vmid":105,"vmname":"web-1","time":"2026-09-28T07:00:02Z","name":"autohourly260928070002","description":"cv4pve-autosnap","tags":["prod","web"],"vmstate":true,"size":1.5}`
	if !strings.HasPrefix(line, "["+first+",") {
		t.Errorf("first object:\n got %s\nwant %s", line, first)
	}

	var decoded []map[string]any
	if err := json.Unmarshal(buf.Bytes(), &decoded); err != nil {
		t.Fatal(err)
	}
	if len(decoded) != 3 {
		t.Fatalf("%d objects", len(decoded))
	}
	row2 := decoded[1]
	if row2["vmname"] != `db, "main"` || row2["description"] != `<b>bold</b> & "quoted" | piped` {
		t.Errorf("strings not preserved: %v", row2)
	}
	if row2["time"] != "2026-09-28T08:00:00+02:00" || row2["size"] != nil || row2["vmstate"] != false {
		t.Errorf("row 2: %v", row2)
	}
	if tags, ok := row2["tags"].([]any); !ok || len(tags) != 0 {
		t.Errorf("empty tags: %#v", row2["tags"])
	}
	if tags, ok := decoded[2]["tags"].([]any); !ok || len(tags) != 0 {
		t.Errorf("nil []string should be []: %#v", decoded[2]["tags"])
	}
	if v, ok := decoded[2]["vmid"].(float64); !ok || v != 7 {
		t.Errorf("vmid %#v, want number 7", decoded[2]["vmid"])
	}
	if strings.Contains(line, `\u003c`) {
		t.Error("HTML characters escaped in JSON")
	}
}

func TestRenderJSONPrettyMatchesCompact(t *testing.T) {
	var compact, pretty bytes.Buffer
	if err := Render(&compact, FormatJSON, statusTable); err != nil {
		t.Fatal(err)
	}
	if err := Render(&pretty, FormatJSONPretty, statusTable); err != nil {
		t.Fatal(err)
	}
	var c, p any
	if err := json.Unmarshal(compact.Bytes(), &c); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(pretty.Bytes(), &p); err != nil {
		t.Fatal(err)
	}
	cj, _ := json.Marshal(c)
	pj, _ := json.Marshal(p)
	if !bytes.Equal(cj, pj) {
		t.Error("json and jsonpretty differ in content")
	}
	if !strings.HasPrefix(pretty.String(), "[\n  {\n    \"node\": \"kvm01\",\n") {
		t.Errorf("not indented by 2 spaces:\n%s", pretty.String())
	}
}

func TestRenderJSONUnsupportedValue(t *testing.T) {
	tb := Table{Columns: []Column{{Header: "X", Key: "x"}}, Rows: [][]any{{func() {}}}}
	var buf bytes.Buffer
	err := Render(&buf, FormatJSON, tb)
	if err == nil || !strings.Contains(err.Error(), `column "x"`) {
		t.Errorf("error %v", err)
	}
	if buf.Len() != 0 {
		t.Errorf("partial output written: %q", buf.String())
	}
}

func TestRenderRowLengthMismatch(t *testing.T) {
	tb := Table{Columns: statusColumns[:2], Rows: [][]any{{"a", 1}, {"b"}}}
	for _, f := range formats {
		err := Render(&bytes.Buffer{}, f, tb)
		if err == nil || err.Error() != "report: row 1 has 1 cells, table has 2 columns" {
			t.Errorf("%s: error %v", f, err)
		}
	}
}

func TestRenderUnknownFormat(t *testing.T) {
	if err := Render(&bytes.Buffer{}, Format("yaml"), statusTable); err == nil {
		t.Error("no error for unknown format")
	}
}

func TestRenderNoColors(t *testing.T) {
	t.Setenv("NO_COLOR", "")
	t.Setenv("TERM", "xterm-256color")
	for _, f := range formats {
		var buf bytes.Buffer
		if err := Render(&buf, f, statusTable); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(buf.String(), "\x1b[") {
			t.Errorf("%s: ANSI escape in output", f)
		}
	}
}

func TestRenderHeaderCaseKept(t *testing.T) {
	tb := Table{Columns: []Column{{Header: "Vm Name", Key: "vmname"}}, Rows: [][]any{{"x"}}}
	for _, f := range []Format{FormatText, FormatUnicode, FormatUnicodeAlt, FormatMarkdown, FormatHTML, FormatCSV} {
		var buf bytes.Buffer
		if err := Render(&buf, f, tb); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(buf.String(), "Vm Name") {
			t.Errorf("%s: header case changed:\n%s", f, buf.String())
		}
	}
}

type stringer struct{}

func (stringer) String() string { return "from String" }

func TestCell(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want string
	}{
		{nil, ""},
		{"s", "s"},
		{42, "42"},
		{int64(-1), "-1"},
		{1.25, "1.25"},
		{true, "yes"},
		{false, ""},
		{[]string{"a", "b c"}, "a,b c"},
		{[]string(nil), ""},
		{time.Date(2026, 1, 2, 3, 4, 5, 999, time.UTC), "2026-01-02 03:04:05"},
		{90 * time.Second, "1m30s"},
		{stringer{}, "from String"},
		{errors.New("boom"), "boom"},
	} {
		if got := Cell(tc.v); got != tc.want {
			t.Errorf("Cell(%#v) = %q, want %q", tc.v, got, tc.want)
		}
	}
}

func TestParseFormat(t *testing.T) {
	for in, want := range map[string]Format{
		"text": FormatText, "Text": FormatText, "TEXT": FormatText,
		"unicode": FormatUnicode, "Unicode": FormatUnicode,
		"unicodeAlt": FormatUnicodeAlt, "UnicodeAlt": FormatUnicodeAlt, "unicodealt": FormatUnicodeAlt,
		"markdown": FormatMarkdown, "Markdown": FormatMarkdown,
		"html": FormatHTML, "Html": FormatHTML, "HTML": FormatHTML,
		"json": FormatJSON, "Json": FormatJSON,
		"jsonpretty": FormatJSONPretty, "JsonPretty": FormatJSONPretty,
		"csv": FormatCSV, "CSV": FormatCSV,
	} {
		got, err := ParseFormat(in)
		if err != nil || got != want {
			t.Errorf("ParseFormat(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "yaml", "json ", "jsonPrettyX"} {
		_, err := ParseFormat(in)
		if err == nil {
			t.Errorf("ParseFormat(%q): no error", in)
			continue
		}
		for _, name := range Formats() {
			if !strings.Contains(err.Error(), name) {
				t.Errorf("ParseFormat(%q) error %q does not list %s", in, err, name)
			}
		}
	}
}

func TestFormats(t *testing.T) {
	want := []string{"text", "unicode", "unicodeAlt", "markdown", "html", "json", "jsonpretty", "csv"}
	if got := Formats(); !slices.Equal(got, want) {
		t.Errorf("Formats() = %q", got)
	}
	for _, name := range want {
		if f, err := ParseFormat(name); err != nil || string(f) != name {
			t.Errorf("round trip %q: %q, %v", name, f, err)
		}
	}
}

func TestJSONHelper(t *testing.T) {
	v := struct {
		B   string         `json:"b"`
		A   int            `json:"a"`
		M   map[string]int `json:"m"`
		Esc string         `json:"esc"`
	}{"x", 1, map[string]int{"z": 1, "y": 2}, "<&>"}

	var buf bytes.Buffer
	if err := JSON(&buf, false, v); err != nil {
		t.Fatal(err)
	}
	if want := `{"b":"x","a":1,"m":{"y":2,"z":1},"esc":"<&>"}` + "\n"; buf.String() != want {
		t.Errorf("compact: %q, want %q", buf.String(), want)
	}
	buf.Reset()
	if err := JSON(&buf, true, v); err != nil {
		t.Fatal(err)
	}
	want := "{\n  \"b\": \"x\",\n  \"a\": 1,\n  \"m\": {\n    \"y\": 2,\n    \"z\": 1\n  },\n  \"esc\": \"<&>\"\n}\n"
	if buf.String() != want {
		t.Errorf("pretty: %q, want %q", buf.String(), want)
	}
	if err := JSON(&buf, false, make(chan int)); err == nil {
		t.Error("no error for a channel")
	}
}

// markdownHostile are cell texts that end a Markdown table cell early or turn into
// HTML when not escaped.
var markdownHostile = Table{
	Columns: []Column{{Header: "NAME", Key: "name"}, {Header: "DESCRIPTION", Key: "description"}},
	Rows: [][]any{
		{"a|b", `pipe | and escaped pipe \| and backslash at end \`},
		{"<script>alert(1)</script>", "&lt; is an entity, <b>bold</b> is HTML"},
		{`C:\dir\`, "two\nlines | <i>"},
	},
}

func TestRenderMarkdownEscapesGolden(t *testing.T) {
	var buf bytes.Buffer
	if err := Render(&buf, FormatMarkdown, markdownHostile); err != nil {
		t.Fatal(err)
	}
	golden(t, "markdown_escape", buf.Bytes())
}

// splitMarkdownRow splits a GitHub-flavoured Markdown table row into its cells'
// source text the way GFM does: a backslash and the character after it are one unit,
// any other '|' separates cells.
func splitMarkdownRow(line string) []string {
	line = strings.TrimSpace(line)
	line = strings.TrimPrefix(line, "|")
	var cells []string
	var cur strings.Builder
	for i := 0; i < len(line); i++ {
		switch c := line[i]; {
		case c == '\\' && i+1 < len(line):
			cur.WriteByte(c)
			cur.WriteByte(line[i+1])
			i++
		case c == '|':
			cells = append(cells, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	if rest := strings.TrimSpace(cur.String()); rest != "" {
		cells = append(cells, cur.String())
	}
	return cells
}

// markdownText is what a Markdown renderer shows for a cell's source: backslash
// escapes of ASCII punctuation removed, <br/> a line break. It fails on raw HTML.
func markdownText(t *testing.T, src string) string {
	t.Helper()
	src = strings.TrimSpace(src)
	var b strings.Builder
	for i := 0; i < len(src); i++ {
		c := src[i]
		switch {
		case c == '\\' && i+1 < len(src) && strings.IndexByte("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", src[i+1]) >= 0:
			b.WriteByte(src[i+1])
			i++
		case strings.HasPrefix(src[i:], "<br/>"):
			b.WriteByte('\n')
			i += len("<br/>") - 1
		case c == '<':
			t.Errorf("raw '<' in cell source %q: Markdown renders it as HTML", src)
			b.WriteByte(c)
		case c == '&':
			t.Errorf("raw '&' in cell source %q: Markdown decodes entities", src)
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// TestRenderMarkdownCellsRoundTrip reads the Markdown output back as a GFM renderer
// would: every row has its cells, and each shows exactly the cell's text.
func TestRenderMarkdownCellsRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	if err := Render(&buf, FormatMarkdown, markdownHostile); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if len(lines) != 2+len(markdownHostile.Rows) {
		t.Fatalf("%d lines, want header, separator and %d rows:\n%s", len(lines), len(markdownHostile.Rows), buf.String())
	}
	for i, row := range markdownHostile.Rows {
		cells := splitMarkdownRow(lines[2+i])
		if len(cells) != len(row) {
			t.Errorf("row %d reads as %d cells %q, want %d", i, len(cells), cells, len(row))
			continue
		}
		for j, v := range row {
			if got := markdownText(t, cells[j]); got != strings.TrimSpace(Cell(v)) {
				t.Errorf("row %d cell %d shows %q, want %q", i, j, got, Cell(v))
			}
		}
	}
}
