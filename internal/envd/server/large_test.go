package server

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// patternReader yields n bytes without holding them: a random 64 KiB block
// repeated, each copy stamped with its index so a dropped, repeated or
// reordered chunk changes the stream's hash.
type patternReader struct {
	block []byte
	n     int64 // total
	off   int64 // read so far
}

func newPatternReader(n int64) *patternReader {
	b := make([]byte, 64<<10)
	_, _ = rand.Read(b)
	return &patternReader{block: b, n: n}
}

func (p *patternReader) Read(buf []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	bs := int64(len(p.block))
	total := 0
	for len(buf) > 0 && p.off < p.n {
		i, within := p.off/bs, p.off%bs
		binary.LittleEndian.PutUint64(p.block, uint64(i))
		c := copy(buf, p.block[within:min(bs, within+p.n-p.off)])
		buf, p.off, total = buf[c:], p.off+int64(c), total+c
	}
	return total, nil
}

// heapWatch samples HeapInuse until stop and returns the peak.
func heapWatch() (stop func() uint64) {
	var (
		mu   sync.Mutex
		peak uint64
		done = make(chan struct{})
		wg   sync.WaitGroup
	)
	sample := func() {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		mu.Lock()
		peak = max(peak, ms.HeapInuse)
		mu.Unlock()
	}
	wg.Go(func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			sample()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	return func() uint64 {
		close(done)
		wg.Wait()
		sample()
		mu.Lock()
		defer mu.Unlock()
		return peak
	}
}

// TestLargeTransferFlatMemory streams 1 GiB up (multipart, as the SDKs send
// it) and down through /files and checks the bytes round-trip while the
// heap of this process, envd and client together, stays small: neither
// direction may buffer a file whole.
func TestLargeTransferFlatMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: moves 1 GiB through envd (not in -short)")
	}
	const (
		size     = 1 << 30
		heapHigh = 64 << 20
	)
	e := startEnvd(t, Options{})
	p := filepath.Join(t.TempDir(), "big.bin")
	// No transparent gzip: the point is the raw stream.
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()

	runtime.GC()
	stop := heapWatch()

	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	sent := sha256.New()
	go func() {
		fw, err := mw.CreateFormFile("file", p)
		if err == nil {
			_, err = io.Copy(fw, io.TeeReader(newPatternReader(size), sent))
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	req, err := http.NewRequest(http.MethodPost, e.url+"/files?"+url.Values{"path": {p}}.Encode(), pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("upload = %d %s", resp.StatusCode, body)
	}
	up := time.Since(start)
	if fi, err := os.Stat(p); err != nil || fi.Size() != size {
		t.Fatalf("uploaded file: %v, %v", fi, err)
	}

	start = time.Now()
	resp, err = client.Get(e.url + "/files?" + url.Values{"path": {p}}.Encode())
	if err != nil {
		t.Fatalf("download: %v", err)
	}
	got := sha256.New()
	n, err := io.Copy(got, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || n != size {
		t.Fatalf("download = %d, %d bytes, %v", resp.StatusCode, n, err)
	}
	down := time.Since(start)
	peak := stop()

	if !bytes.Equal(got.Sum(nil), sent.Sum(nil)) {
		t.Errorf("downloaded bytes differ from uploaded ones (sha256 %x, want %x)", got.Sum(nil), sent.Sum(nil))
	}
	if peak > heapHigh {
		t.Errorf("heap in use peaked at %d MiB moving 1 GiB, want under %d MiB", peak>>20, heapHigh>>20)
	}
	mibps := func(d time.Duration) string { return fmt.Sprintf("%.0f MiB/s", float64(size>>20)/d.Seconds()) }
	t.Logf("1 GiB upload %v (%s), download %v (%s), peak heap in use %d MiB", up.Round(time.Millisecond), mibps(up), down.Round(time.Millisecond), mibps(down), peak>>20)
}

func TestPatternReader(t *testing.T) {
	t.Parallel()
	for _, n := range []int64{0, 1, 8, 64<<10 - 1, 64 << 10, 200_000} {
		a, err := io.ReadAll(newPatternReader(n))
		if err != nil || int64(len(a)) != n {
			t.Fatalf("n=%d: read %d bytes, %v", n, len(a), err)
		}
		if n > 64<<10+8 && binary.LittleEndian.Uint64(a[64<<10:]) != 1 {
			t.Errorf("n=%d: second block not stamped 1", n)
		}
	}
}
