package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/pkg/lifecycle"
	"github.com/wrenn/wrenn/pkg/service"
	"github.com/wrenn/wrenn/pkg/validate"
)

// Error codes of the {"error":{"code","message"}} body.
const (
	CodeUnauthorized    = "unauthorized"
	CodeForbidden       = "forbidden"
	CodeNotFound        = "not_found"
	CodeInvalidArgument = "invalid_argument"
	CodeConflict        = "conflict"
	CodeTooLarge        = "too_large"
	CodeUnavailable     = "unavailable"
	CodeTimeout         = "timeout"
	CodeInternal        = "internal"
)

// Error is a failure written for the API's user: an HTTP status, a code and
// a message that says what went wrong and what to do. Cause, when set, is
// logged and never shown.
type Error struct {
	Status  int
	Code    string
	Message string
	Cause   error
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return e.Code + ": " + e.Message + ": " + e.Cause.Error()
	}
	return e.Code + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Cause }

// Is makes the API's errors match the service's by their code, so an
// extension calling pkg/service tests them with errors.Is.
func (e *Error) Is(target error) bool {
	switch target {
	case service.ErrNotFound:
		return e.Code == CodeNotFound
	case service.ErrConflict:
		return e.Code == CodeConflict
	case service.ErrNoCapacity:
		return e.Status == http.StatusServiceUnavailable
	}
	return false
}

func invalid(field, format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Code: CodeInvalidArgument, Message: field + ": " + fmt.Sprintf(format, args...)}
}

func notFound(what, id string) *Error {
	return &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: fmt.Sprintf("%s %q not found", what, id)}
}

func unauthorized(msg string) *Error {
	return &Error{Status: http.StatusUnauthorized, Code: CodeUnauthorized, Message: msg}
}

func conflict(msg string) *Error {
	return &Error{Status: http.StatusConflict, Code: CodeConflict, Message: msg}
}

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// toAPIError maps any error to what the user sees: errors of the API itself
// as they are, refused transitions as 409, agent failures by class, and
// everything else as a 500 whose details stay in the log.
func toAPIError(err error) *Error {
	var ae *Error
	if errors.As(err, &ae) {
		return ae
	}
	var fe *validate.FieldError
	if errors.As(err, &fe) {
		return invalid(fe.Field, "%s", fe.Msg)
	}
	var te *lifecycle.TransitionError
	if errors.As(err, &te) {
		return &Error{Status: http.StatusConflict, Code: CodeConflict, Message: te.Error(), Cause: err}
	}
	var he *hostclient.Error
	if errors.As(err, &he) {
		switch {
		case errors.Is(err, hostclient.ErrNotFound):
			return &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: "the sandbox no longer exists on its host", Cause: err}
		case errors.Is(err, hostclient.ErrConflict):
			return &Error{Status: http.StatusConflict, Code: CodeConflict, Message: "the sandbox refused the request in its current state: " + he.Message, Cause: err}
		case errors.Is(err, hostclient.ErrInvalid):
			return &Error{Status: http.StatusBadRequest, Code: CodeInvalidArgument, Message: "the sandbox's host rejected the request: " + he.Message, Cause: err}
		case errors.Is(err, hostclient.ErrUnavailable):
			return &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: "the sandbox's host cannot be reached; try again shortly", Cause: err}
		case errors.Is(err, hostclient.ErrTimeout):
			return &Error{Status: http.StatusGatewayTimeout, Code: CodeTimeout, Message: "the sandbox's host did not answer in time", Cause: err}
		}
	}
	return &Error{Status: http.StatusInternalServerError, Code: CodeInternal, Message: "internal error; the request id in X-Request-Id identifies it in the server log", Cause: err}
}

// fail writes err as the error body, logging the cause with the request id.
func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) {
	ae := toAPIError(err)
	log := a.reqLog(r)
	switch {
	case ae.Status >= 500:
		log.Error("request failed", "status", ae.Status, "code", ae.Code, "err", err)
	case ae.Cause != nil:
		log.Info("request refused", "status", ae.Status, "code", ae.Code, "err", err)
	default:
		log.Debug("request refused", "status", ae.Status, "code", ae.Code, "msg", ae.Message)
	}
	var body errorBody
	body.Error.Code, body.Error.Message = ae.Code, ae.Message
	writeJSON(w, ae.Status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
