package envdclient

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// bootTransport plays an envd that is not listening for the first refused
// attempts, then drops one (a SYN lost on a fresh veth: no answer until the
// caller gives up), then answers /init.
type bootTransport struct {
	mu      sync.Mutex
	refused int
	dropped int
	inits   []string
}

func (b *bootTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	b.mu.Lock()
	switch {
	case b.refused > 0:
		b.refused--
		b.mu.Unlock()
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	case b.dropped > 0:
		b.dropped--
		b.mu.Unlock()
		<-r.Context().Done()
		return nil, r.Context().Err()
	case r.URL.Path == "/init":
		body, _ := io.ReadAll(r.Body)
		b.inits = append(b.inits, string(body))
	}
	b.mu.Unlock()
	return &http.Response{StatusCode: http.StatusNoContent, Body: http.NoBody, Request: r}, nil
}

func TestInitWhenUp(t *testing.T) {
	t.Parallel()
	tr := &bootTransport{refused: 5, dropped: 1}
	c := New(tr, net.ParseIP("10.0.0.2"), "tok")
	calls := 0
	start := time.Now()
	err := c.InitWhenUp(context.Background(), func() InitRequest {
		calls++
		return InitRequest{AccessToken: "tok", Timestamp: time.Now()}
	})
	if err != nil {
		t.Fatal(err)
	}
	// Five refused attempts 250 µs apart and one dropped attempt given up
	// after its 5 ms: well under the second TCP would wait.
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("took %s", took)
	}
	// Built afresh for each of the 7 attempts, answered once.
	if calls != 7 || len(tr.inits) != 1 || !strings.Contains(tr.inits[0], `"accessToken":"tok"`) {
		t.Errorf("init built %d times, answered %q", calls, tr.inits)
	}
	if tr.refused != 0 || tr.dropped != 0 {
		t.Errorf("attempts left: refused %d dropped %d", tr.refused, tr.dropped)
	}
}

func TestInitWhenUpGivesUp(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		tr   *bootTransport
	}{
		{"never listens", &bootTransport{refused: 1 << 30}},
		{"never answers", &bootTransport{dropped: 1 << 30}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := New(tt.tr, net.ParseIP("10.0.0.2"), "tok")
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			err := c.InitWhenUp(ctx, func() InitRequest { return InitRequest{} })
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("err %v, want the deadline", err)
			}
			if len(tt.tr.inits) != 0 {
				t.Errorf("init sent to an envd that never answered: %q", tt.tr.inits)
			}
		})
	}
}

// An attempt answered with an error status is not retried: envd is there
// and says something is wrong.
func TestInitWhenUpAnswerError(t *testing.T) {
	t.Parallel()
	c := New(roundTripFunc(func(r *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: http.StatusInternalServerError, Status: "500 Internal Server Error", Body: http.NoBody, Request: r}, nil
	}), net.ParseIP("10.0.0.2"), "tok")
	err := c.InitWhenUp(context.Background(), func() InitRequest { return InitRequest{} })
	if err == nil || !strings.Contains(err.Error(), "500") {
		t.Fatalf("err %v, want the 500", err)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
