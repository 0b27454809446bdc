package localsvc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/wrenn/wrenn/pkg/id"
)

// ErrNotInstalled reports that a server's binaries are not on this machine.
// Tests skip on it (outside CI); the local stack installs the package.
var ErrNotInstalled = errors.New("not installed")

// PostgresOptions says where and how to run a Postgres server.
type PostgresOptions struct {
	// Dir is the server's own directory: the cluster lives in Dir/data, the
	// superuser password in Dir/superuser.pass. An existing cluster is reused.
	Dir string
	// Port to listen on, on 127.0.0.1 only; 0 picks a free one.
	Port int
	// User, Password and Database are created when missing (the password is
	// reset to Password when the role exists). Defaults: wrenn, a random
	// password, wrenn.
	User, Password, Database string
	// Log receives the server's output; nil discards it (the last lines are
	// still quoted in start errors).
	Log io.Writer
	// Fast turns off fsync and synchronous commit: for throwaway test
	// clusters only, since a crash can lose or corrupt data.
	Fast bool
}

// Postgres is a running server started by StartPostgres.
type Postgres struct {
	// DSN connects as Options.User to Options.Database.
	DSN string
	// AdminDSN connects as the cluster's superuser to the postgres database;
	// tests use it to create a database per test.
	AdminDSN string
	Port     int
	Dir      string

	proc *proc
}

// PostgresBinDir returns the bin directory of the newest Postgres installed
// under /usr/lib/postgresql, or an error wrapping ErrNotInstalled.
func PostgresBinDir() (string, error) {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	type cand struct {
		ver float64
		dir string
	}
	var cs []cand
	for _, m := range matches {
		dir := filepath.Dir(m)
		v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(dir)), 64)
		if err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err != nil {
			continue
		}
		cs = append(cs, cand{v, dir})
	}
	if len(cs) == 0 {
		return "", fmt.Errorf("postgres server binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql): %w", ErrNotInstalled)
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].ver > cs[j].ver })
	return cs[0].dir, nil
}

// StartPostgres initialises a cluster in o.Dir on first use (scram-sha-256
// authentication, TCP on 127.0.0.1 only, no unix socket), starts the server,
// waits until it accepts connections and creates the role and database when
// missing. As root, the server runs as the postgres system user (or a wrenn
// system user it creates), because Postgres refuses to run as root.
func StartPostgres(ctx context.Context, o PostgresOptions) (*Postgres, error) {
	if !filepath.IsAbs(o.Dir) {
		return nil, fmt.Errorf("postgres directory %q must be an absolute path", o.Dir)
	}
	if o.User == "" {
		o.User = "wrenn"
	}
	if o.Database == "" {
		o.Database = "wrenn"
	}
	if o.Password == "" {
		o.Password = id.Secret(16)
	}
	bin, err := PostgresBinDir()
	if err != nil {
		return nil, err
	}
	acct, err := serviceAccount()
	if err != nil {
		return nil, err
	}
	data := filepath.Join(o.Dir, "data")
	superPass, err := preparePostgresDir(ctx, bin, o.Dir, data, acct)
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		port := o.Port
		if port == 0 {
			if port, err = FreePort(); err != nil {
				return nil, err
			}
		}
		pg, err := runPostgres(ctx, bin, data, port, superPass, o, acct)
		// A port picked by us may have been taken in between: try another.
		if errors.Is(err, errExited) && o.Port == 0 && attempt < 2 {
			continue
		}
		if err != nil {
			return nil, err
		}
		return pg, nil
	}
}

// preparePostgresDir creates the cluster when Dir/data holds none and returns
// the superuser password.
func preparePostgresDir(ctx context.Context, bin, dir, data string, acct *account) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create postgres directory: %w", err)
	}
	passFile := filepath.Join(dir, "superuser.pass")
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); err == nil {
		pass, err := os.ReadFile(passFile)
		if err != nil {
			return "", fmt.Errorf("read superuser password of existing cluster %q: %w", data, err)
		}
		// The account may differ from the one that created the cluster
		// (postgres installed since); keep ownership consistent.
		if err := acct.makeTraversable(dir); err != nil {
			return "", err
		}
		if err := chownTree(data, acct); err != nil {
			return "", err
		}
		return strings.TrimSpace(string(pass)), nil
	}
	// A half-made cluster from an interrupted initdb is thrown away.
	if err := os.RemoveAll(data); err != nil {
		return "", fmt.Errorf("remove incomplete cluster %q: %w", data, err)
	}
	if err := os.Mkdir(data, 0o700); err != nil {
		return "", fmt.Errorf("create cluster directory: %w", err)
	}
	if err := acct.chown(data); err != nil {
		return "", err
	}
	if err := acct.makeTraversable(dir); err != nil {
		return "", err
	}
	pass := id.Secret(16)
	if err := os.WriteFile(passFile, []byte(pass+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write superuser password: %w", err)
	}
	// initdb reads the password from a file it can open as the account; the
	// file lives inside the cluster directory, readable only by the account,
	// and is removed right after.
	pwFile := filepath.Join(data, ".initdb-pw")
	if err := os.WriteFile(pwFile, []byte(pass+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write initdb password file: %w", err)
	}
	defer os.Remove(pwFile)
	if err := acct.chown(pwFile); err != nil {
		return "", err
	}
	// initdb refuses a non-empty directory, so it works in a fresh sibling
	// and the result is moved into place.
	tmp := data + ".init"
	_ = os.RemoveAll(tmp)
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return "", fmt.Errorf("create initdb directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := acct.chown(tmp); err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "initdb"),
		"-D", tmp, "-U", "postgres", "--pwfile", pwFile,
		"--auth", "scram-sha-256", "--encoding", "UTF8", "--locale", "C", "--no-sync")
	acct.apply(cmd)
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("initdb %q: %w\n%s", data, err, out)
	}
	if err := os.Remove(pwFile); err != nil {
		return "", fmt.Errorf("remove initdb password file: %w", err)
	}
	if err := os.Remove(data); err != nil {
		return "", fmt.Errorf("replace cluster directory: %w", err)
	}
	if err := os.Rename(tmp, data); err != nil {
		return "", fmt.Errorf("move new cluster into place: %w", err)
	}
	return pass, nil
}

// chownTree gives every file under root to the account.
func chownTree(root string, acct *account) error {
	if acct == nil {
		return nil
	}
	return filepath.Walk(root, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, int(acct.uid), int(acct.gid))
	})
}

func runPostgres(ctx context.Context, bin, data string, port int, superPass string, o PostgresOptions, acct *account) (*Postgres, error) {
	args := []string{"-D", data, "-p", strconv.Itoa(port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=",
		"-c", "password_encryption=scram-sha-256",
		"-c", "max_connections=200",
	}
	if o.Fast {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	cmd := exec.Command(filepath.Join(bin, "postgres"), args...)
	cmd.Dir = data
	acct.apply(cmd)
	// SIGQUIT is Postgres's immediate shutdown: if we die, it stops its
	// backends and exits instead of lingering.
	p, err := startProc(cmd, o.Log, syscall.SIGQUIT)
	if err != nil {
		return nil, err
	}
	pg := &Postgres{
		Port:     port,
		Dir:      o.Dir,
		proc:     p,
		AdminDSN: pgDSN("postgres", superPass, port, "postgres"),
		DSN:      pgDSN(o.User, o.Password, port, o.Database),
	}
	readyCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	err = waitReady(readyCtx, p, func(ctx context.Context) error {
		c, err := pgx.Connect(ctx, pg.AdminDSN)
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		// The server must be ours, not another one already on the port.
		var dir string
		if err := c.QueryRow(ctx, "SHOW data_directory").Scan(&dir); err != nil {
			return err
		}
		if dir != data {
			return fmt.Errorf("another server (data directory %q) answers on port %d", dir, port)
		}
		return nil
	})
	if err == nil {
		err = ensureRoleAndDatabase(readyCtx, pg.AdminDSN, o.User, o.Password, o.Database)
	}
	if err != nil {
		stopErr := p.stop(context.WithoutCancel(ctx), syscall.SIGINT, 10*time.Second)
		return nil, p.failure("start postgres on port "+strconv.Itoa(port), errors.Join(err, stopErr))
	}
	return pg, nil
}

func pgDSN(user, pass string, port int, db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, pass),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// quoteLiteral quotes s as an SQL string literal (standard_conforming_strings
// is on in every supported Postgres). CREATE ROLE takes no parameters.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func ensureRoleAndDatabase(ctx context.Context, adminDSN, user, pass, db string) error {
	c, err := pgx.Connect(ctx, adminDSN)
	if err != nil {
		return fmt.Errorf("connect as superuser: %w", err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	role := pgx.Identifier{user}.Sanitize()
	var exists bool
	if err := c.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", user).Scan(&exists); err != nil {
		return fmt.Errorf("look up role %q: %w", user, err)
	}
	stmt := "CREATE ROLE " + role + " LOGIN CREATEDB PASSWORD " + quoteLiteral(pass)
	if exists {
		stmt = "ALTER ROLE " + role + " LOGIN PASSWORD " + quoteLiteral(pass)
	}
	if _, err := c.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("create role %q: %w", user, err)
	}
	return createDatabase(ctx, c, db, user)
}

func createDatabase(ctx context.Context, c *pgx.Conn, db, owner string) error {
	var exists bool
	if err := c.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", db).Scan(&exists); err != nil {
		return fmt.Errorf("look up database %q: %w", db, err)
	}
	if exists {
		return nil
	}
	if _, err := c.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()+" OWNER "+pgx.Identifier{owner}.Sanitize()); err != nil {
		return fmt.Errorf("create database %q: %w", db, err)
	}
	return nil
}

// CreateDatabase creates an empty database named name (owned by the
// options' user) unless it exists, and returns a DSN for it.
func (p *Postgres) CreateDatabase(ctx context.Context, name string) (string, error) {
	u, err := url.Parse(p.DSN)
	if err != nil {
		return "", fmt.Errorf("parse DSN: %w", err)
	}
	c, err := pgx.Connect(ctx, p.AdminDSN)
	if err != nil {
		return "", fmt.Errorf("connect as superuser: %w", err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	if err := createDatabase(ctx, c, name, u.User.Username()); err != nil {
		return "", err
	}
	u.Path = "/" + name
	return u.String(), nil
}

// DropDatabase drops the database, disconnecting its sessions.
func (p *Postgres) DropDatabase(ctx context.Context, name string) error {
	c, err := pgx.Connect(ctx, p.AdminDSN)
	if err != nil {
		return fmt.Errorf("connect as superuser: %w", err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %q: %w", name, err)
	}
	return nil
}

// Stop shuts the server down with Postgres's fast mode (SIGINT, the same as
// pg_ctl stop -m fast: sessions are disconnected, data is flushed), waits up
// to 30 s or until ctx ends, then kills whatever of its process group is left.
// It returns once the server process is gone.
func (p *Postgres) Stop(ctx context.Context) error {
	return p.proc.stop(ctx, syscall.SIGINT, 30*time.Second)
}
