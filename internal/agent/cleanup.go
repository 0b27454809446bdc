package agent

import (
	"context"
	"errors"
	"fmt"
)

// cleanup is a last-in-first-out list of release steps. A create pushes one
// step per resource it takes; on failure, or at destroy, the steps run in
// reverse so each resource is released before what it depends on.
type cleanup struct {
	steps []step
}

type step struct {
	name string
	fn   func(ctx context.Context) error
}

func (c *cleanup) add(name string, fn func(ctx context.Context) error) {
	c.steps = append(c.steps, step{name, fn})
}

// run releases everything, newest first, under a context that outlives the
// caller's cancellation: a cancelled request must not leave half a sandbox.
// Every step runs even when an earlier one failed.
func (c *cleanup) run(ctx context.Context) error {
	ctx = context.WithoutCancel(ctx)
	var errs []error
	for i := len(c.steps) - 1; i >= 0; i-- {
		s := c.steps[i]
		if err := s.fn(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.name, err))
		}
	}
	c.steps = nil
	return errors.Join(errs...)
}
