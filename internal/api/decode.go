package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"reflect"
	"sort"
	"strings"
)

// maxBody bounds JSON request bodies; none of the API's bodies is near it.
const maxBody = 1 << 20

// decode reads r's body strictly into dst (a pointer to a struct with json
// tags): malformed JSON, a body that is not an object, unknown fields and
// wrongly typed fields are 400s that name the problem and the field. An
// empty body counts as {}.
func decode(r *http.Request, dst any) error {
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge, Message: "request body is larger than 1 MiB"}
		}
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalidArgument, Message: "could not read the request body", Cause: err}
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		body = []byte("{}")
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return &Error{Status: http.StatusBadRequest, Code: CodeInvalidArgument, Message: "body: must be a JSON object"}
		}
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalidArgument, Message: "body: malformed JSON: " + jsonProblem(err)}
	}
	if fields == nil {
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalidArgument, Message: "body: must be a JSON object"}
	}
	known := jsonFields(dst)
	var unknown []string
	for k := range fields {
		if !known[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return invalid(unknown[0], "unknown field (accepted: %s)", strings.Join(sortedKeys(known), ", "))
	}
	if err := json.Unmarshal(body, dst); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return invalid(te.Field, "must be %s, not %s", kindName(te.Type), te.Value)
		}
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalidArgument, Message: "body: " + jsonProblem(err)}
	}
	return nil
}

// jsonProblem describes a syntax error without echoing the body.
func jsonProblem(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return se.Error()
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return "unexpected end of input"
	}
	return "cannot be parsed"
}

func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice:
		return "an array of " + strings.TrimPrefix(kindName(t.Elem()), "a ")
	case reflect.Map:
		return "an object of " + strings.TrimPrefix(kindName(t.Elem()), "a ")
	case reflect.Pointer:
		return kindName(t.Elem())
	}
	return t.String()
}

func jsonFields(dst any) map[string]bool {
	t := reflect.TypeOf(dst).Elem()
	out := map[string]bool{}
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out[name] = true
		}
	}
	return out
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
