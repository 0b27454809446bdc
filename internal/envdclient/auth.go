package envdclient

import (
	"context"

	"connectrpc.com/connect"
)

// tokenHeader adds X-Access-Token to every unary and streaming call.
type tokenHeader string

func (t tokenHeader) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if t != "" {
			req.Header().Set("X-Access-Token", string(t))
		}
		return next(ctx, req)
	}
}

func (t tokenHeader) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if t != "" {
			conn.RequestHeader().Set("X-Access-Token", string(t))
		}
		return conn
	}
}

func (t tokenHeader) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
