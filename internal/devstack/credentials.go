package devstack

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/wrenn/wrenn/pkg/config"
	"github.com/wrenn/wrenn/pkg/id"
)

// Credentials are the local stack's secrets. They are generated on the first
// start and kept, so Postgres and Redis data stay reachable and the printed
// API key stays valid across restarts.
type Credentials struct {
	PostgresPassword string `json:"postgres_password"`
	RedisPassword    string `json:"redis_password"`
	// APIKey is the admin key the control plane bootstraps on an empty
	// database; it is what `export WRENN_API_KEY=` prints.
	APIKey string `json:"api_key"`
}

// LoadOrCreateCredentials reads the credentials file at path, generating and
// writing (mode 0600) whatever is missing. An existing file with broader
// permissions is tightened to 0600. created reports whether anything was
// generated.
func LoadOrCreateCredentials(path string) (c Credentials, created bool, err error) {
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &c); err != nil {
			return c, false, fmt.Errorf("read credentials %s: %w (delete it to start over with new credentials and an empty database)", path, err)
		}
		if c.APIKey != "" && !config.ValidAPIKey(c.APIKey) {
			return c, false, fmt.Errorf("credentials %s: api_key is not a Wrenn API key (wrn_ + 32 hex)", path)
		}
		if err := os.Chmod(path, 0o600); err != nil {
			return c, false, fmt.Errorf("restrict credentials %s: %w", path, err)
		}
	case errors.Is(err, fs.ErrNotExist):
	default:
		return c, false, fmt.Errorf("read credentials: %w", err)
	}
	// Passwords are hex so they need no quoting in a DSN, a Redis URL or
	// redis.conf.
	for _, f := range []struct {
		v   *string
		gen func() string
	}{
		{&c.PostgresPassword, func() string { return id.Secret(16) }},
		{&c.RedisPassword, func() string { return id.Secret(16) }},
		{&c.APIKey, id.NewAPIKey},
	} {
		if *f.v == "" {
			*f.v = f.gen()
			created = true
		}
	}
	if !created {
		return c, false, nil
	}
	if err := writeFileAtomic(path, c); err != nil {
		return c, false, err
	}
	return c, true, nil
}

// writeFileAtomic writes v as JSON through a temporary file that is 0600 from
// its creation, so the secrets are never readable by others, and a crash
// leaves either the old file or the new one.
func writeFileAtomic(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode credentials: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".credentials-*")
	if err != nil {
		return fmt.Errorf("write credentials: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if _, err := f.Write(append(data, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write credentials %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync credentials %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close credentials %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("install credentials %s: %w", path, err)
	}
	return nil
}

// ExportLines are the two lines users paste into another shell. They depend
// only on the API URL and the kept key, so every start prints the same ones.
func ExportLines(apiURL, apiKey string) string {
	return fmt.Sprintf("export WRENN_API_URL=%s\nexport WRENN_API_KEY=%s\n", apiURL, apiKey)
}
