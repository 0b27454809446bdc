// Package migrations embeds Wrenn's SQL migrations (goose, plain SQL) so the
// control plane applies them at start without files on disk, and an
// enterprise build can apply the same set.
package migrations

import "embed"

// FS holds every migration, named NNNNN_description.sql, in goose order.
//
//go:embed *.sql
var FS embed.FS
