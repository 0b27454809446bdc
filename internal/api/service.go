package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/id"
	"github.com/wrenn/wrenn/pkg/lifecycle"
	"github.com/wrenn/wrenn/pkg/service"
	"github.com/wrenn/wrenn/pkg/validate"
)

// Sandboxes returns the sandbox service the REST routes call, for
// extensions (cpextension.ServerContext.Sandboxes).
func (a *API) Sandboxes() service.Sandboxes { return sandboxService{a} }

// sandboxService implements service.Sandboxes on the API's dependencies.
type sandboxService struct{ a *API }

// callerOf is the service caller of an authenticated request.
func callerOf(r *http.Request) service.Caller {
	p := principal(r)
	return service.Caller{TeamID: p.TeamID, Actor: p.Actor()}
}

func (s sandboxService) Create(ctx context.Context, c service.Caller, req service.CreateSandbox) (service.Created, error) {
	a := s.a
	if err := req.Validate(); err != nil {
		return service.Created{}, err
	}
	ok, err := a.q.TemplateVisible(ctx, db.TemplateVisibleParams{Name: req.Template, TeamID: c.TeamID})
	if err != nil {
		return service.Created{}, fmt.Errorf("look up template: %w", err)
	}
	if !ok {
		return service.Created{}, validate.Errorf("template", "unknown template %q", req.Template)
	}
	metadata := []byte("{}")
	if len(req.Metadata) > 0 {
		if metadata, err = json.Marshal(req.Metadata); err != nil {
			return service.Created{}, fmt.Errorf("encode metadata: %w", err)
		}
	}
	sid := id.New(id.Sandbox)
	var trafficToken string
	if req.Private {
		// Stored before the sandbox exists, so it is never public.
		if trafficToken, err = a.newTrafficToken(ctx, sid); err != nil {
			return service.Created{}, err
		}
	}
	vcpus, mem, disk, timeout, internet := req.Resolved()
	sb, host, err := a.placeAndInsert(ctx, db.InsertSandboxParams{
		ID: sid, TeamID: c.TeamID, Template: req.Template,
		Vcpus: int32(vcpus), MemoryMb: int32(mem), DiskMb: int64(disk), TimeoutSec: int32(timeout),
		Metadata: metadata, AllowInternet: pgtype.Bool{Bool: internet, Valid: true},
	})
	if err != nil {
		return service.Created{}, err
	}
	env := req.Env
	if err := a.goBackground(func(ctx context.Context) { a.startSandbox(ctx, sb, host.Address, c.Actor, env) }); err != nil {
		// Shutting down: nothing will start it, so say so in its record.
		a.settleError(context.WithoutCancel(ctx), sb, lifecycle.Starting, "the control plane shut down before the sandbox could start; create it again", c.Actor)
		return service.Created{}, err
	}
	return service.Created{Sandbox: sandboxJSON(sb), TrafficToken: trafficToken}, nil
}

func (s sandboxService) Get(ctx context.Context, teamID, sandboxID string) (service.Sandbox, error) {
	sb, err := s.a.sandboxOf(ctx, teamID, sandboxID)
	if err != nil {
		return service.Sandbox{}, err
	}
	return sandboxJSON(sb), nil
}

func (s sandboxService) List(ctx context.Context, teamID string, l service.ListSandboxes) (service.SandboxPage, error) {
	limit := l.Limit
	if limit == 0 {
		limit = service.DefaultPageSize
	}
	if limit < 1 || limit > service.MaxPageSize {
		return service.SandboxPage{}, validate.Errorf("limit", "must be from 1 to %d, got %d", service.MaxPageSize, limit)
	}
	if err := validate.Metadata("metadata", l.Metadata); err != nil {
		return service.SandboxPage{}, err
	}
	after, afterID, err := service.DecodeCursor(l.Cursor)
	if err != nil {
		return service.SandboxPage{}, err
	}
	params := db.ListSandboxesParams{TeamID: teamID, Statuses: []string{}, Metadata: []byte("{}"), AfterID: afterID, MaxRows: int32(limit)}
	for _, st := range l.Statuses {
		if !st.Valid() {
			return service.SandboxPage{}, validate.Errorf("status", "unknown sandbox status %q", st)
		}
		params.Statuses = append(params.Statuses, string(st))
	}
	if len(l.Metadata) > 0 {
		if params.Metadata, err = json.Marshal(l.Metadata); err != nil {
			return service.SandboxPage{}, fmt.Errorf("encode metadata filter: %w", err)
		}
	}
	if l.Cursor != "" {
		params.AfterCreatedAt = &after
	}
	rows, err := s.a.q.ListSandboxes(ctx, params)
	if err != nil {
		return service.SandboxPage{}, fmt.Errorf("list sandboxes: %w", err)
	}
	page := service.SandboxPage{Sandboxes: make([]service.Sandbox, len(rows))}
	for i, sb := range rows {
		page.Sandboxes[i] = sandboxJSON(sb)
	}
	if len(rows) == limit {
		last := rows[len(rows)-1]
		page.NextCursor = service.EncodeCursor(last.CreatedAt, last.ID)
	}
	return page, nil
}

func (s sandboxService) Pause(ctx context.Context, c service.Caller, sandboxID string) error {
	return s.a.beginOp(ctx, c, sandboxID, pauseOp)
}

func (s sandboxService) Resume(ctx context.Context, c service.Caller, sandboxID string) error {
	return s.a.beginOp(ctx, c, sandboxID, resumeOp)
}

func (s sandboxService) Destroy(ctx context.Context, c service.Caller, sandboxID string) error {
	return s.a.beginDestroy(ctx, c, sandboxID)
}
