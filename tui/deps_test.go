package tui

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// tui talks to the daemon over HTTP only: of this module it imports the
// status schema (and test helpers), never the daemon or its parts.
func TestImportsNoDaemon(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no Go files: %v", err)
	}
	allowed := map[string]bool{
		"github.com/lancache/lancache/statusapi":        true,
		"github.com/lancache/lancache/internal/syncbuf": true,
	}
	fset := token.NewFileSet()
	for _, name := range files {
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if (p == "github.com/lancache/lancache" || strings.HasPrefix(p, "github.com/lancache/lancache/")) && !allowed[p] {
				t.Errorf("%s imports %s: tui may use only the status schema (statusapi)", name, p)
			}
		}
	}
}
