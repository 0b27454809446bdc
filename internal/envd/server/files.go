package server

import (
	"bufio"
	"compress/gzip"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/wrenn/wrenn/internal/envd/fsops"
)

// fileInfo is one written file in the POST /files answer, as the SDKs read it.
type fileInfo struct {
	Name     string            `json:"name"`
	Type     string            `json:"type"`
	Path     string            `json:"path"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// metadataHeader starts the name of each upload header that carries one
// metadata entry: "X-Metadata-Author: alice" stores author=alice.
const metadataHeader = "X-Metadata-"

// uploadMetadata collects the metadata an upload carries in its
// X-Metadata-<key> headers, keys lowercased, as every written file gets it.
// Values must be printable US-ASCII, and each key must come once.
func uploadMetadata(h http.Header) (map[string]string, error) {
	var md map[string]string
	for name, values := range h {
		if len(name) < len(metadataHeader) || !strings.EqualFold(name[:len(metadataHeader)], metadataHeader) {
			continue
		}
		key := strings.ToLower(name[len(metadataHeader):])
		switch {
		case key == "":
			return nil, fmt.Errorf("%w: header %s names no metadata key", errInvalid, name)
		case len(key) > fsops.MaxMetadataKey:
			return nil, fmt.Errorf("%w: metadata key %q is %d bytes long; the most is %d", errInvalid, key, len(key), fsops.MaxMetadataKey)
		case len(values) != 1:
			return nil, fmt.Errorf("%w: metadata key %q is sent %d times; send it once", errInvalid, key, len(values))
		}
		for _, c := range []byte(values[0]) {
			if c < 0x20 || c > 0x7e {
				return nil, fmt.Errorf("%w: the value of metadata key %q holds byte %#02x; values must be printable US-ASCII", errInvalid, key, c)
			}
		}
		if md == nil {
			md = map[string]string{}
		}
		md[key] = values[0]
	}
	return md, nil
}

// filesCaller resolves the user of a /files request: the `username` query
// parameter the SDKs send, else the Basic header, else the defaults.
func (s *Server) filesCaller(r *http.Request) (caller, error) {
	h := r.Header
	if name := r.URL.Query().Get("username"); name != "" {
		h = h.Clone()
		h.Set("Authorization", basicUser(name))
	}
	return s.callerOf(h)
}

func basicUser(name string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(name+":"))
}

// clientReader marks failures to read the upload as the client's.
type clientReader struct{ r io.Reader }

func (c clientReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		err = fmt.Errorf("%w: read upload: %w", errInvalid, err)
	}
	return n, err
}

// writeFSError answers a failed file operation with the status the SDKs map
// to their error types.
func (s *Server) writeFSError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, errInvalid), errors.Is(err, fsops.ErrInvalid):
		status = http.StatusBadRequest
	case errors.Is(err, os.ErrNotExist):
		status = http.StatusNotFound
	case errors.Is(err, os.ErrPermission):
		status = http.StatusForbidden
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		status = http.StatusInsufficientStorage
	}
	if status == http.StatusInternalServerError {
		s.log.Warn("file request failed", "error", err)
	}
	writeError(w, status, err.Error())
}

// handleGetFile sends a file's bytes, gzip-compressed when the client asks
// for gzip and not for a range, and the file compresses.
func (s *Server) handleGetFile(w http.ResponseWriter, r *http.Request) {
	c, err := s.filesCaller(r)
	if err != nil {
		s.writeFSError(w, err)
		return
	}
	p := r.URL.Query().Get("path")
	if p == "" {
		s.writeFSError(w, fmt.Errorf("%w: the path query parameter is required", errInvalid))
		return
	}
	p = c.resolvePath(p)
	// Opened as the user, read as envd: the kernel checks permissions once,
	// at open, as it would for the user's own process.
	f, err := fsops.As(c.fs, func() (*os.File, error) { return os.Open(p) })
	if err != nil {
		s.writeFSError(w, fmt.Errorf("open %s: %w", p, err))
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		s.writeFSError(w, fmt.Errorf("stat %s: %w", p, err))
		return
	}
	if !fi.Mode().IsRegular() {
		s.writeFSError(w, fmt.Errorf("%w: %s is not a regular file", fsops.ErrInvalid, p))
		return
	}
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": filepath.Base(p)}))
	w.Header().Set("Cache-Control", "no-store")
	// A range is of the file's own bytes, so it is never compressed.
	if r.Header.Get("Range") == "" && acceptsGzip(r.Header.Get("Accept-Encoding")) && compressible(f) {
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Add("Vary", "Accept-Encoding")
		// Fastest compression: a download is bound by the sender's CPU
		// here, and half the work beats a few percent fewer bytes on a
		// link this short.
		gz, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
		if _, err := io.Copy(gz, f); err != nil {
			s.log.Debug("send file", "path", p, "error", err)
			return
		}
		_ = gz.Close()
		return
	}
	http.ServeContent(w, r, filepath.Base(p), fi.ModTime(), f)
}

// compressSample is how much of a file compressible tries; compressWorth
// is the fraction of it that gzip must save for the file to be sent
// compressed.
const (
	compressSample = 64 << 10
	compressWorth  = 0.1
)

// compressible reports whether gzip would shrink f by compressWorth, judged
// by compressing its first compressSample bytes (about 0.2 ms). An archive,
// an image or random data would only cost both ends CPU: BestSpeed gzip of
// incompressible bytes runs at a fraction of the link's speed here. A file
// under 1 KiB is never worth the header.
func compressible(f *os.File) bool {
	buf := make([]byte, compressSample)
	n, err := f.ReadAt(buf, 0)
	if n < 1<<10 || (err != nil && !errors.Is(err, io.EOF)) {
		return false
	}
	var out countingWriter
	gz, _ := gzip.NewWriterLevel(&out, gzip.BestSpeed)
	_, _ = gz.Write(buf[:n])
	_ = gz.Close()
	return float64(out) <= float64(n)*(1-compressWorth)
}

// countingWriter counts what is written to it and keeps none of it.
type countingWriter int

func (c *countingWriter) Write(p []byte) (int, error) {
	*c += countingWriter(len(p))
	return len(p), nil
}

func acceptsGzip(v string) bool {
	for _, part := range strings.Split(v, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(name), "gzip") && strings.ReplaceAll(strings.TrimSpace(params), " ", "") != "q=0" {
			return true
		}
	}
	return false
}

// handlePostFile writes uploads: multipart form parts named "file" (each to
// the path query parameter or, without it, to the part's file name), or one
// raw body (application/octet-stream, optionally gzip-encoded) to path.
func (s *Server) handlePostFile(w http.ResponseWriter, r *http.Request) {
	c, err := s.filesCaller(r)
	if err != nil {
		s.writeFSError(w, err)
		return
	}
	md, err := uploadMetadata(r.Header)
	if err != nil {
		s.writeFSError(w, err)
		return
	}
	target := r.URL.Query().Get("path")
	mediaType, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var written []fileInfo
	if mediaType == "multipart/form-data" {
		mr := multipart.NewReader(bufio.NewReaderSize(r.Body, 64<<10), params["boundary"])
		for {
			part, err := mr.NextPart()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				s.writeFSError(w, fmt.Errorf("%w: read multipart upload: %w", errInvalid, err))
				return
			}
			if part.FormName() != "file" {
				_ = part.Close()
				continue
			}
			dst := target
			if dst == "" {
				dst = partFileName(part)
			}
			info, err := s.writeUpload(c, dst, part, md)
			_ = part.Close()
			if err != nil {
				s.writeFSError(w, err)
				return
			}
			written = append(written, info)
		}
		if len(written) == 0 {
			s.writeFSError(w, fmt.Errorf("%w: the upload has no part named \"file\"", errInvalid))
			return
		}
	} else {
		body := io.Reader(r.Body)
		if strings.EqualFold(r.Header.Get("Content-Encoding"), "gzip") {
			gz, err := gzip.NewReader(r.Body)
			if err != nil {
				s.writeFSError(w, fmt.Errorf("%w: gzip upload: %w", errInvalid, err))
				return
			}
			defer gz.Close()
			body = gz
		}
		info, err := s.writeUpload(c, target, body, md)
		if err != nil {
			s.writeFSError(w, err)
			return
		}
		written = append(written, info)
	}
	writeJSON(w, written)
}

// partFileName is the part's full file name: the SDKs put the target path
// there, and multipart.Part.FileName keeps only its last element.
func partFileName(part *multipart.Part) string {
	_, params, err := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
	if err != nil {
		return ""
	}
	return params["filename"]
}

// writeUpload writes src to the caller's path p, creating missing parents
// and keeping an existing file's mode and owner, and makes md the file's
// whole metadata. Parents and file are created as the user (so they are the
// user's), then envd sets the metadata and copies the bytes into the open
// file. Metadata the filesystem refuses leaves an existing file as it was.
func (s *Server) writeUpload(c caller, p string, src io.Reader, md map[string]string) (fileInfo, error) {
	if p == "" {
		return fileInfo{}, fmt.Errorf("%w: the path query parameter is required", errInvalid)
	}
	p = c.resolvePath(p)
	type opened struct {
		f       *os.File
		created bool
	}
	o, err := fsops.As(c.fs, func() (opened, error) {
		if err := fsops.MkdirAll(filepath.Dir(p)); err != nil {
			return opened{}, err
		}
		_, statErr := os.Lstat(p)
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o644)
		if err != nil {
			if errors.Is(err, syscall.EISDIR) {
				return opened{}, fmt.Errorf("%w: %s is a directory", fsops.ErrInvalid, p)
			}
			return opened{}, fmt.Errorf("open %s for writing: %w", p, err)
		}
		return opened{f, errors.Is(statErr, os.ErrNotExist)}, nil
	})
	if err != nil {
		return fileInfo{}, err
	}
	// Metadata first, so a filesystem that refuses it leaves the old
	// content; then the truncation the open left out.
	if err = fsops.ReplaceMetadata(o.f, md); errors.Is(err, fsops.ErrMetadata) {
		err = fmt.Errorf("%w: %w", errInvalid, err)
	}
	if err == nil {
		err = o.f.Truncate(0)
	}
	if err == nil {
		bw := bufio.NewWriterSize(o.f, 64<<10)
		_, err = io.Copy(struct{ io.Writer }{bw}, clientReader{src})
		if err == nil {
			err = bw.Flush()
		}
	}
	if cerr := o.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if o.created {
			// No half-written new file. Removed as the user too: meanwhile
			// the user's processes may have swapped a parent directory for a
			// symlink to somewhere only root may write.
			_ = fsops.Run(c.fs, func() error { return os.Remove(p) })
		}
		return fileInfo{}, fmt.Errorf("write %s: %w", p, err)
	}
	return fileInfo{Name: filepath.Base(p), Type: "file", Path: p, Metadata: md}, nil
}
