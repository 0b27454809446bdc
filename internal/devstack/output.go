package devstack

import (
	"bytes"
	"io"
	"strings"
	"sync"
)

// console serialises whole lines from several children onto one terminal, so
// "[cp]" and "[agent]" lines never interleave mid-line.
type console struct {
	mu  sync.Mutex
	out io.Writer
}

func (c *console) writeLine(prefix string, line []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b bytes.Buffer
	b.Grow(len(prefix) + len(line) + 2)
	b.WriteString(prefix)
	b.WriteByte(' ')
	b.Write(line)
	b.WriteByte('\n')
	_, _ = c.out.Write(b.Bytes())
}

// prefixWriter splits a child's output into lines, writes each to the console
// behind a prefix, and keeps the last lines for error messages.
type prefixWriter struct {
	prefix string
	con    *console

	mu      sync.Mutex
	partial []byte
	tail    []string
	keep    int
}

func newPrefixWriter(con *console, prefix string, keep int) *prefixWriter {
	return &prefixWriter{prefix: prefix, con: con, keep: keep}
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		w.emit(w.partial[:i])
		w.partial = w.partial[i+1:]
	}
	// A child that never ends its line must not grow the buffer forever.
	if len(w.partial) > 64<<10 {
		w.emit(w.partial)
		w.partial = nil
	}
	return len(p), nil
}

func (w *prefixWriter) emit(line []byte) {
	line = bytes.TrimRight(line, "\r")
	w.con.writeLine(w.prefix, line)
	w.tail = append(w.tail, string(line))
	if len(w.tail) > w.keep {
		w.tail = w.tail[len(w.tail)-w.keep:]
	}
}

// Flush writes an unterminated last line.
func (w *prefixWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.partial) > 0 {
		w.emit(w.partial)
		w.partial = nil
	}
}

// Tail returns the last lines written, oldest first.
func (w *prefixWriter) Tail() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.tail, "\n")
}
