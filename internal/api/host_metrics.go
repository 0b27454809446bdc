package api

import (
	"fmt"
	"math"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/id"
)

const (
	// maxFlushSamples bounds one POST /v1/hosts/sandbox-metrics; agents
	// send a day's ring (17 280 samples at 5 s) in several.
	maxFlushSamples = 2000
	// storedMetricsWindow is how much history is kept per sandbox, the
	// same day the agent's ring holds.
	storedMetricsWindow = 24 * time.Hour
)

// hostMetrics is the body an agent posts before it pauses or destroys a
// sandbox: the samples its ring took since its last flush.
type hostMetrics struct {
	SandboxID string                    `json:"sandbox_id"`
	Samples   []hostclient.MetricSample `json:"samples"`
}

func (m hostMetrics) validate() error {
	if !id.Valid(id.Sandbox, m.SandboxID) {
		return invalid("sandbox_id", "must be a sandbox id (sb-…), got %q", m.SandboxID)
	}
	if len(m.Samples) == 0 || len(m.Samples) > maxFlushSamples {
		return invalid("samples", "must hold 1 to %d samples, got %d", maxFlushSamples, len(m.Samples))
	}
	for i, s := range m.Samples {
		switch {
		case s.Time.IsZero():
			return invalid("samples", "sample %d has no time", i)
		case math.IsNaN(s.CPUPercent) || math.IsInf(s.CPUPercent, 0) || s.CPUPercent < 0:
			return invalid("samples", "sample %d has cpu_percent %v, want a number of at least 0", i, s.CPUPercent)
		case s.MemoryBytes > math.MaxInt64 || s.DiskBytes > math.MaxInt64:
			return invalid("samples", "sample %d has memory_bytes or disk_bytes past 2^63", i)
		}
	}
	return nil
}

// hostByToken authenticates an agent's callback by its bearer host token.
func (a *API) hostByToken(r *http.Request) (db.Host, error) {
	token := bearer(r)
	if token == "" {
		return db.Host{}, unauthorized("missing host token: send Authorization: Bearer <host_token>")
	}
	host, err := a.q.GetHostByTokenHash(r.Context(), ptr(hashSecret(token)))
	if isNoRows(err) {
		return db.Host{}, unauthorized("invalid host token")
	}
	if err != nil {
		return db.Host{}, fmt.Errorf("look up host token: %w", err)
	}
	return host, nil
}

// hostSandboxMetrics stores samples an agent flushed for one of its
// sandboxes, in any status (a destroyed sandbox's last samples arrive after
// it stopped). Samples are keyed by sandbox and time, so a redelivered
// flush stores nothing twice; samples older than a day before the newest
// are dropped.
func (a *API) hostSandboxMetrics(w http.ResponseWriter, r *http.Request) {
	host, err := a.hostByToken(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var m hostMetrics
	if err := decode(r, &m); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := m.validate(); err != nil {
		a.fail(w, r, err)
		return
	}
	ctx := r.Context()
	if _, err := a.q.GetSandboxOnHost(ctx, db.GetSandboxOnHostParams{ID: m.SandboxID, HostID: host.ID}); isNoRows(err) {
		a.fail(w, r, notFound("sandbox", m.SandboxID))
		return
	} else if err != nil {
		a.fail(w, r, fmt.Errorf("get sandbox: %w", err))
		return
	}
	p := db.InsertSandboxMetricSamplesParams{
		SandboxID:   m.SandboxID,
		Ats:         make([]time.Time, len(m.Samples)),
		CpuPercents: make([]float64, len(m.Samples)),
		MemoryBytes: make([]int64, len(m.Samples)),
		DiskBytes:   make([]int64, len(m.Samples)),
	}
	var newest time.Time
	for i, s := range m.Samples {
		p.Ats[i], p.CpuPercents[i] = s.Time.UTC(), s.CPUPercent
		p.MemoryBytes[i], p.DiskBytes[i] = int64(s.MemoryBytes), int64(s.DiskBytes)
		if s.Time.After(newest) {
			newest = s.Time
		}
	}
	var stored int64
	err = pgx.BeginFunc(ctx, a.d.DB, func(tx pgx.Tx) error {
		q := a.q.WithTx(tx)
		var err error
		if stored, err = q.InsertSandboxMetricSamples(ctx, p); err != nil {
			return fmt.Errorf("store samples: %w", err)
		}
		if err := q.PruneSandboxMetricSamples(ctx, db.PruneSandboxMetricSamplesParams{SandboxID: m.SandboxID, Before: newest.Add(-storedMetricsWindow)}); err != nil {
			return fmt.Errorf("prune samples: %w", err)
		}
		return nil
	})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.reqLog(r).Debug("sandbox metrics flushed", "host_id", host.ID, "sandbox_id", m.SandboxID, "samples", len(m.Samples), "stored", stored)
	writeJSON(w, http.StatusOK, map[string]any{"stored": stored})
}

// storedMetrics are the flushed samples of a sandbox after since, oldest
// first.
func (a *API) storedMetrics(r *http.Request, sandboxID string, since time.Time) ([]hostclient.MetricSample, error) {
	rows, err := a.q.ListSandboxMetricSamples(r.Context(), db.ListSandboxMetricSamplesParams{SandboxID: sandboxID, Since: since})
	if err != nil {
		return nil, fmt.Errorf("list stored metrics of %s: %w", sandboxID, err)
	}
	out := make([]hostclient.MetricSample, 0, len(rows))
	for _, row := range rows {
		out = append(out, hostclient.MetricSample{
			Time: row.At.UTC(), CPUPercent: row.CpuPercent, MemoryBytes: uint64(row.MemoryBytes), DiskBytes: uint64(row.DiskBytes),
		})
	}
	return out, nil
}
