package service

import (
	"errors"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/wrenn/wrenn/pkg/lifecycle"
	"github.com/wrenn/wrenn/pkg/validate"
)

func TestParseListQuery(t *testing.T) {
	t.Parallel()
	q, err := ParseListQuery(url.Values{"status": {"running, paused", "error"}, "metadata": {"app=web&env=prod"}, "limit": {"25"}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(q.Statuses, []lifecycle.Status{lifecycle.Running, lifecycle.Paused, lifecycle.Error}) ||
		len(q.Metadata) != 2 || q.Metadata["app"] != "web" || q.Metadata["env"] != "prod" || q.Limit != 25 || q.Cursor != "" {
		t.Errorf("parsed %+v", q)
	}
	if q, err := ParseListQuery(url.Values{}); err != nil || q.Limit != 0 || q.Statuses != nil || q.Metadata != nil {
		t.Errorf("empty query: %+v, %v", q, err)
	}
	for _, c := range []struct {
		q     url.Values
		field string
	}{
		{url.Values{"status": {"asleep"}}, "status"},
		{url.Values{"status": {"running,"}}, "status"},
		{url.Values{"limit": {"0"}}, "limit"},
		{url.Values{"limit": {"1001"}}, "limit"},
		{url.Values{"metadata": {"a=1&a=2"}}, "metadata"},
		{url.Values{"metadata": {"=v"}}, "metadata"},
		{url.Values{"cursor": {"!!"}}, "cursor"},
		{url.Values{"cursor": {"AAAA"}}, "cursor"},
	} {
		var fe *validate.FieldError
		if _, err := ParseListQuery(c.q); !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("%v: %v, want a FieldError for %s", c.q, err, c.field)
		}
	}
}

func TestCursorRoundTrip(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 30, 12, 34, 56, 123456000, time.UTC)
	c := EncodeCursor(at.Add(789*time.Nanosecond), "sb-abc")
	got, id, err := DecodeCursor(c)
	if err != nil || !got.Equal(at) || id != "sb-abc" {
		t.Errorf("decoded %v %q %v, want %v sb-abc (microseconds, as Postgres keeps them)", got, id, err, at)
	}
	if _, err := ParseListQuery(url.Values{"cursor": {c}}); err != nil {
		t.Errorf("a cursor of ours refused: %v", err)
	}
}

func TestCreateSandboxValidate(t *testing.T) {
	t.Parallel()
	n := func(v int) *int { return &v }
	off := false
	ok := CreateSandbox{Template: "minimal", VCPUs: n(2), MemoryMB: n(1024), DiskMB: n(2048), TimeoutSec: n(60),
		Metadata: map[string]string{"app": "web"}, Env: map[string]string{"MODE": "ci"}, AllowInternet: &off}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	vcpus, mem, disk, timeout, internet := ok.Resolved()
	if vcpus != 2 || mem != 1024 || disk != 2048 || timeout != 60 || internet {
		t.Errorf("resolved %d %d %d %d %v", vcpus, mem, disk, timeout, internet)
	}
	vcpus, mem, disk, timeout, internet = CreateSandbox{Template: "minimal"}.Resolved()
	if vcpus != DefaultVCPUs || mem != DefaultMemoryMB || disk != 0 || timeout != DefaultTimeoutSec || !internet {
		t.Errorf("defaults %d %d %d %d %v", vcpus, mem, disk, timeout, internet)
	}
	for field, bad := range map[string]CreateSandbox{
		"template":    {},
		"vcpus":       {Template: "minimal", VCPUs: n(0)},
		"memory_mb":   {Template: "minimal", MemoryMB: n(64)},
		"disk_mb":     {Template: "minimal", DiskMB: n(100)},
		"timeout_sec": {Template: "minimal", TimeoutSec: n(86401)},
		"metadata":    {Template: "minimal", Metadata: map[string]string{"": "x"}},
		"env":         {Template: "minimal", Env: map[string]string{"A B": "x"}},
	} {
		var fe *validate.FieldError
		if err := bad.Validate(); !errors.As(err, &fe) || fe.Field != field {
			t.Errorf("%s: %v", field, err)
		}
	}
}
