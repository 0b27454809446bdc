package agent

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// sharedHTTP are net/http's process-wide client, transport and the helpers
// that use them. The agent's links each have their own transport (DESIGN.md
// §3): a shared one lets one slow sandbox or control plane stall the others.
var sharedHTTP = map[string]bool{
	"DefaultClient": true, "DefaultTransport": true,
	"Get": true, "Post": true, "Head": true, "PostForm": true,
}

// sharedHTTPUses returns "file:line: http.X" for every use of sharedHTTP in
// src, whatever name net/http is imported under.
func sharedHTTPUses(fset *token.FileSet, name string, src any) ([]string, error) {
	f, err := parser.ParseFile(fset, name, src, parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	local := ""
	for _, imp := range f.Imports {
		if p, _ := strconv.Unquote(imp.Path.Value); p == "net/http" {
			local = "http"
			if imp.Name != nil {
				local = imp.Name.Name
			}
		}
	}
	if local == "" || local == "_" {
		return nil, nil
	}
	var out []string
	ast.Inspect(f, func(n ast.Node) bool {
		// An http.Client without a Transport falls back to DefaultTransport.
		if lit, ok := n.(*ast.CompositeLit); ok && isSel(lit.Type, local, "Client") && !hasField(lit, "Transport") {
			out = append(out, fset.Position(lit.Pos()).String()+": http.Client without Transport")
		}
		sel, ok := n.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		if x, ok := sel.X.(*ast.Ident); ok && x.Name == local && sharedHTTP[sel.Sel.Name] {
			out = append(out, fset.Position(sel.Pos()).String()+": http."+sel.Sel.Name)
		}
		return true
	})
	return out, nil
}

func isSel(e ast.Expr, pkg, name string) bool {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	x, ok := sel.X.(*ast.Ident)
	return ok && x.Name == pkg && sel.Sel.Name == name
}

func hasField(lit *ast.CompositeLit, name string) bool {
	for _, e := range lit.Elts {
		if kv, ok := e.(*ast.KeyValueExpr); ok {
			if k, ok := kv.Key.(*ast.Ident); ok && k.Name == name {
				return true
			}
		}
	}
	return false
}

func TestNoSharedHTTPClientInAgentPackages(t *testing.T) {
	t.Parallel()
	t.Run("checker sees a use", func(t *testing.T) {
		src := "package p\nimport h \"net/http\"\nvar c = h.DefaultClient\nvar d = &h.Client{Timeout: 1}\nvar e = &h.Client{Transport: nil}\nfunc f() { h.Get(\"x\") }\n"
		uses, err := sharedHTTPUses(token.NewFileSet(), "p.go", src)
		if err != nil || len(uses) != 3 {
			t.Fatalf("checker found %v (err %v) in a file with three uses", uses, err)
		}
	})
	dirs := []string{".", "../envdclient", "../network", "../image", "../runtime"}
	fset := token.NewFileSet()
	files := 0
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") {
				return err
			}
			files++
			uses, err := sharedHTTPUses(fset, path, nil)
			if err != nil {
				return err
			}
			for _, u := range uses {
				t.Errorf("%s: use a transport of its own, never net/http's shared client", u)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("walk %s: %v", dir, err)
		}
	}
	if files < 20 {
		t.Fatalf("checked only %d files: the package paths are wrong", files)
	}
}
