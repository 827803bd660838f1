package policy

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDocsExamplesParse: every complete file shown in docs/policy.md is valid.
func TestDocsExamplesParse(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "policy.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(doc), -1)
	n := 0
	for _, b := range blocks {
		src := b[1]
		if !strings.HasPrefix(src, "policies:") && !strings.HasPrefix(src, "connections:") {
			continue
		}
		n++
		if _, err := Parse([]byte(src), "docs/policy.md block"); err != nil {
			t.Errorf("docs example does not parse:\n%s\n%v", src, err)
		}
	}
	if n < 3 {
		t.Errorf("found %d complete examples in docs/policy.md, want at least 3", n)
	}
}
