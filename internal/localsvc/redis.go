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
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisOptions says where and how to run a Redis server.
type RedisOptions struct {
	// Dir holds redis.conf and, with Persist, the append-only file.
	Dir string
	// Port on 127.0.0.1; 0 picks a free one.
	Port int
	// Password, when set, is required from clients (requirepass).
	Password string
	// Persist turns on the append-only file so data survives a restart;
	// without it Redis keeps nothing on disk.
	Persist bool
	// Log receives the server's output; nil discards it.
	Log io.Writer
}

// Redis is a running server started by StartRedis.
type Redis struct {
	// URL is redis://[:password@]127.0.0.1:port/0.
	URL  string
	Port int
	Dir  string

	proc *proc
}

// RedisBinary returns the path of redis-server or an error wrapping
// ErrNotInstalled.
func RedisBinary() (string, error) {
	p, err := exec.LookPath("redis-server")
	if err != nil {
		for _, c := range []string{"/usr/bin/redis-server", "/usr/local/bin/redis-server"} {
			if _, serr := os.Stat(c); serr == nil {
				return c, nil
			}
		}
		return "", fmt.Errorf("redis-server (apt-get install redis-server): %w", ErrNotInstalled)
	}
	return p, nil
}

// StartRedis starts redis-server bound to 127.0.0.1 with protected mode on,
// requirepass when o.Password is set and appendonly when o.Persist is set,
// and waits until it answers PING.
func StartRedis(ctx context.Context, o RedisOptions) (*Redis, error) {
	if !filepath.IsAbs(o.Dir) {
		return nil, fmt.Errorf("redis directory %q must be an absolute path", o.Dir)
	}
	if strings.ContainsAny(o.Password, " \t\r\n\"'\\") {
		return nil, errors.New("redis password must not contain spaces, quotes or backslashes")
	}
	bin, err := RedisBinary()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create redis directory: %w", err)
	}
	for attempt := 0; ; attempt++ {
		port := o.Port
		if port == 0 {
			if port, err = FreePort(); err != nil {
				return nil, err
			}
		}
		r, err := runRedis(ctx, bin, port, o)
		if errors.Is(err, errExited) && o.Port == 0 && attempt < 2 {
			continue
		}
		return r, err
	}
}

func runRedis(ctx context.Context, bin string, port int, o RedisOptions) (*Redis, error) {
	// The configuration goes in a file, not argv, so the password does not
	// show in ps.
	conf := []string{
		"bind 127.0.0.1",
		"protected-mode yes",
		"port " + strconv.Itoa(port),
		"daemonize no",
		"dir " + o.Dir,
		`logfile ""`,
		`save ""`,
	}
	if o.Persist {
		conf = append(conf, "appendonly yes", "appendfsync everysec")
	} else {
		conf = append(conf, "appendonly no")
	}
	if o.Password != "" {
		conf = append(conf, "requirepass "+o.Password)
	}
	confPath := filepath.Join(o.Dir, "redis.conf")
	if err := os.WriteFile(confPath, []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("write redis.conf: %w", err)
	}
	cmd := exec.Command(bin, confPath)
	cmd.Dir = o.Dir
	p, err := startProc(cmd, o.Log, syscall.SIGKILL)
	if err != nil {
		return nil, err
	}
	u := url.URL{Scheme: "redis", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Path: "/0"}
	if o.Password != "" {
		u.User = url.UserPassword("", o.Password)
	}
	r := &Redis{URL: u.String(), Port: port, Dir: o.Dir, proc: p}
	opts, err := redis.ParseURL(r.URL)
	if err != nil {
		_ = p.stop(ctx, syscall.SIGTERM, time.Second)
		return nil, fmt.Errorf("parse redis URL: %w", err)
	}
	opts.MaxRetries = -1
	client := redis.NewClient(opts)
	defer client.Close()
	readyCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err = waitReady(readyCtx, p, func(ctx context.Context) error {
		// While loading the append-only file Redis answers LOADING. The
		// server must be ours, not another one already on the port.
		info, err := client.Info(ctx, "server").Result()
		if err != nil {
			return err
		}
		if want := "process_id:" + strconv.Itoa(cmd.Process.Pid); !strings.Contains(info, want+"\r\n") {
			return fmt.Errorf("another server answers on port %d", port)
		}
		return nil
	})
	if err != nil {
		stopErr := p.stop(context.WithoutCancel(ctx), syscall.SIGTERM, 10*time.Second)
		return nil, p.failure("start redis on port "+strconv.Itoa(port), errors.Join(err, stopErr))
	}
	return r, nil
}

// Stop shuts Redis down with SIGTERM (which flushes the append-only file when
// persistence is on), waits up to 10 s or until ctx ends, then kills what is
// left of its process group. It returns once the process is gone.
func (r *Redis) Stop(ctx context.Context) error {
	return r.proc.stop(ctx, syscall.SIGTERM, 10*time.Second)
}
