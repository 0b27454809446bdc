package e2e

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/wrenn/wrenn/internal/localsvc"
)

// TestMutualTLSStack runs the stack with an https agent: the agent gets its
// certificate at registration, the control plane reaches it over mutual
// TLS (create and exec work), and nobody else gets through.
func TestMutualTLSStack(t *testing.T) {
	port, err := localsvc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	s := startStack(t, withEnv(nil, []string{"WRENN_AGENT_LISTEN=" + addr, "WRENN_AGENT_ADVERTISE_URL=https://" + addr}))

	var hosts struct {
		Hosts []struct {
			ID      string `json:"id"`
			Address string `json:"address"`
		} `json:"hosts"`
	}
	s.mustDo(http.MethodGet, "/v1/admin/hosts", nil, http.StatusOK, &hosts)
	if len(hosts.Hosts) != 1 || hosts.Hosts[0].Address != "https://"+addr {
		t.Fatalf("hosts = %+v, want one at https://%s", hosts.Hosts, addr)
	}
	// The host is online as soon as the control plane recorded the
	// registration; the agent stores its credentials right after.
	credsPath := filepath.Join(s.dir, "agent", "credentials.json")
	s.waitFor("stored credentials", 10*time.Second, s.agent, func() bool { _, err := os.Stat(credsPath); return err == nil })
	b, err := os.ReadFile(credsPath)
	if err != nil {
		t.Fatal(err)
	}
	var creds struct {
		Certificate  string `json:"certificate"`
		RefreshToken string `json:"refresh_token"`
	}
	if err := json.Unmarshal(b, &creds); err != nil || creds.Certificate == "" || creds.RefreshToken == "" {
		t.Fatalf("agent credentials lack a certificate or refresh token: %v", err)
	}

	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", s.agent.tail())
		}
	})
	var created sandbox
	s.mustDo(http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal", "vcpus": 1, "memory_mb": 256}, http.StatusAccepted, &created)
	s.waitStatus(created.ID, "running", 60*time.Second)
	var res execResult
	s.mustDo(http.MethodPost, "/v1/sandboxes/"+created.ID+"/exec", map[string]any{"cmd": "echo", "args": []string{"over mtls"}}, http.StatusOK, &res)
	if res.Stdout != "over mtls\n" || res.ExitCode != 0 {
		t.Errorf("exec through mTLS = %+v", res)
	}

	// Plain HTTP and TLS without the control plane's certificate are refused.
	plain := &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}
	defer plain.CloseIdleConnections()
	if resp, err := plain.Get("http://" + addr + "/healthz"); err == nil {
		code := resp.StatusCode
		resp.Body.Close()
		if code == http.StatusOK {
			t.Error("the agent answered plain HTTP")
		}
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err == nil {
		// TLS 1.3 reports the missing client certificate on the first read.
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	var oe *net.OpError
	if err == nil || !errors.As(err, &oe) || oe.Op != "remote error" {
		t.Errorf("a client without a certificate was not refused at the handshake: %v", err)
	}

	// The host cannot be deleted under its sandbox without force.
	s.mustDo(http.MethodDelete, "/v1/admin/hosts/"+hosts.Hosts[0].ID, nil, http.StatusConflict, nil)
	s.mustDo(http.MethodDelete, "/v1/sandboxes/"+created.ID, nil, http.StatusAccepted, nil)
	s.waitStatus(created.ID, "stopped", 60*time.Second)
}
