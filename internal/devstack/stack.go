package devstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// service is something the stack started and must stop: Postgres, Redis, the
// control plane, the agent.
type service interface {
	Name() string
	Stop(ctx context.Context) error
}

// watched is a service whose unexpected end the stack notices.
type watched interface {
	service
	// Done closes when the service has ended.
	Done() <-chan struct{}
	// Err says why it ended; valid once Done is closed.
	Err() error
}

// ChildExitedError reports a service that ended while the stack was running.
type ChildExitedError struct {
	Name string
	Err  error
	// Tail is its last output, when known.
	Tail string
}

func (e *ChildExitedError) Error() string {
	msg := fmt.Sprintf("%s exited unexpectedly: %v", e.Name, e.Err)
	if e.Tail != "" {
		msg += "\nits last output:\n" + e.Tail
	}
	return msg
}

func (e *ChildExitedError) Unwrap() error { return e.Err }

// stack is what Run started, in start order. Shutdown first drains the work
// (sandboxes, through the API, while everything still runs), then stops the
// services in reverse order: agent, control plane, Redis, Postgres.
type stack struct {
	services []service
	watched  []watched
	// drain destroys the sandboxes; nil until the control plane is up.
	drain func(ctx context.Context) error
	// stopTimeout bounds each service's Stop.
	stopTimeout time.Duration
	// say reports progress on the console.
	say func(format string, args ...any)
}

func (s *stack) add(svc service) {
	s.services = append(s.services, svc)
	if w, ok := svc.(watched); ok {
		s.watched = append(s.watched, w)
	}
}

// watch blocks until ctx ends (nil: a requested stop) or a watched service
// ends (a *ChildExitedError naming it).
func (s *stack) watch(ctx context.Context) error {
	died := make(chan watched, len(s.watched))
	stop := make(chan struct{})
	defer close(stop)
	for _, w := range s.watched {
		go func() {
			select {
			case <-w.Done():
				died <- w
			case <-stop:
			}
		}()
	}
	select {
	case <-ctx.Done():
		return nil
	case w := <-died:
		e := &ChildExitedError{Name: w.Name(), Err: w.Err()}
		if t, ok := w.(interface{ Tail() string }); ok {
			e.Tail = t.Tail()
		}
		return e
	}
}

// shutdown drains and stops everything, even after failures, and returns
// every error that happened. It must be called with a context that is not
// already cancelled (context.WithoutCancel of the run's).
func (s *stack) shutdown(ctx context.Context) error {
	var errs []error
	if s.drain != nil {
		if err := s.drain(ctx); err != nil {
			errs = append(errs, fmt.Errorf("destroy sandboxes: %w", err))
		}
	}
	for i := len(s.services) - 1; i >= 0; i-- {
		svc := s.services[i]
		s.say("stopping %s", svc.Name())
		sctx, cancel := context.WithTimeout(ctx, s.stopTimeout)
		if err := svc.Stop(sctx); err != nil {
			errs = append(errs, fmt.Errorf("stop %s: %w", svc.Name(), err))
		}
		cancel()
	}
	s.services, s.watched = nil, nil
	return errors.Join(errs...)
}

// funcService adapts a server handle (localsvc's Postgres and Redis) to the
// stack, with a port probe standing in for a wait channel, since those
// handles do not expose one.
type funcService struct {
	name string
	stop func(ctx context.Context) error
	done chan struct{}
	err  error
	quit chan struct{}
}

// newProbedService returns a service that counts as ended after three
// failed TCP connects to addr in a row, probed every interval.
func newProbedService(name, addr string, interval time.Duration, stop func(ctx context.Context) error) *funcService {
	f := &funcService{name: name, stop: stop, done: make(chan struct{}), quit: make(chan struct{})}
	go func() {
		fails := 0
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-f.quit:
				return
			case <-t.C:
			}
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				fails++
				if fails >= 3 {
					f.err = fmt.Errorf("nothing listens on %s any more: %w", addr, err)
					close(f.done)
					return
				}
				continue
			}
			c.Close()
			fails = 0
		}
	}()
	return f
}

func (f *funcService) Name() string          { return f.name }
func (f *funcService) Done() <-chan struct{} { return f.done }
func (f *funcService) Err() error            { return f.err }

// Stop ends the probe first, so stopping is never mistaken for a crash.
func (f *funcService) Stop(ctx context.Context) error {
	select {
	case <-f.quit:
	default:
		close(f.quit)
	}
	return f.stop(ctx)
}
