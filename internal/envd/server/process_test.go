package server

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/wrenn/wrenn/proto/envd/process"
)

func TestStartOverEveryProtocol(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{})
	for _, proto := range protocols {
		t.Run(proto.name, func(t *testing.T) {
			t.Parallel()
			r := run(t, proto.client(e.url), startReq("/bin/sh", "-c", "echo out; echo err >&2; exit 3"))
			if r.pid == 0 {
				t.Fatalf("no pid")
			}
			if got := r.stdout.String(); got != "out\n" {
				t.Errorf("stdout = %q", got)
			}
			if got := r.stderr.String(); got != "err\n" {
				t.Errorf("stderr = %q", got)
			}
			if r.end.GetExitCode() != 3 || !r.end.GetExited() || r.end.GetStatus() != "exit status 3" {
				t.Errorf("end = %v, want exit status 3", r.end)
			}
			waitGone(t, e, r.pid)
		})
	}
}

func TestEndEvents(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{})
	tests := []struct {
		name     string
		script   string
		code     int32
		exited   bool
		status   string
		noOutput bool
	}{
		{name: "success", script: "true", code: 0, exited: true, status: "exit status 0"},
		{name: "failure", script: "exit 42", code: 42, exited: true, status: "exit status 42"},
		{name: "killed", script: "kill -9 $$", code: -1, exited: false, status: "signal: killed"},
		{name: "terminated", script: "kill -TERM $$", code: -1, exited: false, status: "signal: terminated"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := run(t, e.client(), startReq("/bin/sh", "-c", tc.script))
			if r.end.GetExitCode() != tc.code || r.end.GetExited() != tc.exited || r.end.GetStatus() != tc.status {
				t.Fatalf("end = %v, want code %d exited %v status %q", r.end, tc.code, tc.exited, tc.status)
			}
		})
	}
}

func TestBinaryOutputPassesThrough(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{})
	want := []byte{0xff, 0xfe, 0x00, 0x80, 0xc3, 0x28, '\n', 0x01}
	var esc strings.Builder
	for _, b := range want {
		fmt.Fprintf(&esc, "\\%03o", b)
	}
	for _, proto := range protocols[:3] {
		t.Run(proto.name, func(t *testing.T) {
			t.Parallel()
			r := run(t, proto.client(e.url), startReq("/bin/sh", "-c", "printf '"+esc.String()+"'; printf '"+esc.String()+"' >&2"))
			if !bytes.Equal(r.stdout.Bytes(), want) || !bytes.Equal(r.stderr.Bytes(), want) {
				t.Fatalf("stdout %x stderr %x, want %x", r.stdout.Bytes(), r.stderr.Bytes(), want)
			}
		})
	}
}

func TestLargeOutputIsComplete(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{})
	r := run(t, e.client(), startReq("/bin/sh", "-c", "head -c 5000000 /dev/zero"))
	if r.stdout.Len() != 5000000 {
		t.Fatalf("got %d bytes, want 5000000", r.stdout.Len())
	}
}

func TestStdin(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{})
	c := e.client()
	ctx := context.Background()

	t.Run("send and close", func(t *testing.T) {
		t.Parallel()
		req := startReq("cat")
		req.Msg.Stdin = ptr(true)
		s, err := c.Start(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		pid := firstEvent(t, s)
		for _, chunk := range []string{"hello ", "world\x00\xff"} {
			if _, err := c.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: sel(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte(chunk)}}})); err != nil {
				t.Fatalf("SendInput: %v", err)
			}
		}
		if _, err := c.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: sel(pid)})); err != nil {
			t.Fatalf("CloseStdin: %v", err)
		}
		r := collect(t, s, pid)
		if got := r.stdout.String(); got != "hello world\x00\xff" {
			t.Fatalf("stdout = %q", got)
		}
		if r.end.GetExitCode() != 0 {
			t.Fatalf("end = %v", r.end)
		}
	})

	t.Run("stream input", func(t *testing.T) {
		t.Parallel()
		req := startReq("cat")
		req.Msg.Stdin = ptr(true)
		req.Msg.Tag = ptr("stream-input")
		s, err := c.Start(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		pid := firstEvent(t, s)
		in := c.StreamInput(ctx)
		msgs := []*pb.StreamInputRequest{
			{Event: &pb.StreamInputRequest_Start{Start: &pb.StreamInputRequest_StartEvent{Process: tagSel("stream-input")}}},
			{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("a")}}}}},
			{Event: &pb.StreamInputRequest_Keepalive{Keepalive: &pb.StreamInputRequest_KeepAlive{}}},
			{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("b")}}}}},
		}
		for _, m := range msgs {
			if err := in.Send(m); err != nil {
				t.Fatalf("StreamInput send: %v", err)
			}
		}
		if _, err := in.CloseAndReceive(); err != nil {
			t.Fatalf("StreamInput: %v", err)
		}
		if _, err := c.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: tagSel("stream-input")})); err != nil {
			t.Fatalf("CloseStdin: %v", err)
		}
		if r := collect(t, s, pid); r.stdout.String() != "ab" {
			t.Fatalf("stdout = %q", r.stdout.String())
		}
	})

	t.Run("no stdin", func(t *testing.T) {
		t.Parallel()
		s, err := c.Start(ctx, startReq("/bin/sh", "-c", "cat; sleep 5"))
		if err != nil {
			t.Fatal(err)
		}
		pid := firstEvent(t, s)
		_, err = c.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: sel(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("x")}}}))
		wantCode(t, err, connect.CodeFailedPrecondition, "without stdin")
		if _, err := c.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: sel(pid), Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
			t.Fatal(err)
		}
		if r := collect(t, s, pid); r.stdout.Len() != 0 || r.end.GetStatus() != "signal: killed" {
			t.Fatalf("stdout %q end %v: stdin was not /dev/null", r.stdout.String(), r.end)
		}
	})
}

func TestManyConcurrentProcesses(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{})
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Go(func() {
			c := protocols[i%len(protocols)].client(e.url)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			s, err := c.Start(ctx, startReq("/bin/sh", "-c", fmt.Sprintf("echo %d; echo e%d >&2; exit %d", i, i, i%7)))
			if err != nil {
				errs <- err
				return
			}
			var out, errOut bytes.Buffer
			var end *pb.ProcessEvent_EndEvent
			for s.Receive() {
				ev := s.Msg().GetEvent()
				out.Write(ev.GetData().GetStdout())
				errOut.Write(ev.GetData().GetStderr())
				if ev.GetEnd() != nil {
					end = ev.GetEnd()
				}
			}
			if err := s.Err(); err != nil {
				errs <- err
				return
			}
			if out.String() != fmt.Sprintf("%d\n", i) || errOut.String() != fmt.Sprintf("e%d\n", i) || end.GetExitCode() != int32(i%7) {
				errs <- fmt.Errorf("process %d: stdout %q stderr %q end %v", i, out.String(), errOut.String(), end)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestInputWhileOutputFloods(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{})
	c := e.client()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req := startReq("/bin/sh", "-c", "(head -c 20000000 /dev/zero) & read line; echo \"GOT $line\" >&2; wait")
	req.Msg.Stdin = ptr(true)
	s, err := c.Start(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	pid := firstEvent(t, s)
	// Send input while the flood is in flight; the stream is read below.
	sent := make(chan error, 1)
	go func() {
		_, err := c.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: sel(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("ping\n")}}}))
		sent <- err
	}()
	r := &result{pid: pid}
	for s.Receive() {
		r.add(t, s.Msg().GetEvent())
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatalf("SendInput: %v", err)
	}
	if r.stdout.Len() != 20000000 || r.stderr.String() != "GOT ping\n" {
		t.Fatalf("stdout %d bytes, stderr %q", r.stdout.Len(), r.stderr.String())
	}
}

func TestProcessOutlivesItsStream(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{})
	first := protocols[1].client(e.url) // binary
	second := protocols[0].client(e.url)

	t.Run("client goes away", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(context.Background())
		req := startReq("/bin/sh", "-c", "echo early; read x; echo \"late $x\"; exit 5")
		req.Msg.Stdin = ptr(true)
		req.Msg.Tag = ptr("outlive")
		s, err := first.Start(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		pid := firstEvent(t, s)
		cancel()
		s.Close()

		// Still listed, with its tag, after the starter left.
		time.Sleep(100 * time.Millisecond)
		list, err := second.List(context.Background(), connect.NewRequest(&pb.ListRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		var found bool
		for _, p := range list.Msg.GetProcesses() {
			if p.GetPid() == pid {
				found = p.GetTag() == "outlive" && p.GetConfig().GetCmd() == "/bin/sh"
			}
		}
		if !found {
			t.Fatalf("process %d not listed with its tag: %v", pid, list.Msg)
		}

		cs, err := second.Connect(context.Background(), connect.NewRequest(&pb.ConnectRequest{Process: tagSel("outlive")}))
		if err != nil {
			t.Fatal(err)
		}
		if got := firstEvent(t, cs); got != pid {
			t.Fatalf("Connect start pid %d, want %d", got, pid)
		}
		if _, err := second.SendInput(context.Background(), connect.NewRequest(&pb.SendInputRequest{Process: sel(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("bye\n")}}})); err != nil {
			t.Fatal(err)
		}
		r := &result{pid: pid}
		for cs.Receive() {
			r.add(t, cs.Msg().GetEvent())
		}
		if err := cs.Err(); err != nil {
			t.Fatal(err)
		}
		if r.stdout.String() != "late bye\n" || r.end.GetExitCode() != 5 {
			t.Fatalf("reattached stdout %q end %v", r.stdout.String(), r.end)
		}
		waitGone(t, e, pid)
		_, err = second.SendInput(context.Background(), connect.NewRequest(&pb.SendInputRequest{Process: sel(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("x")}}}))
		wantCode(t, err, connect.CodeNotFound, fmt.Sprint(pid))
	})

	t.Run("deadline passes", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		s, err := first.Start(ctx, startReq("/bin/sh", "-c", "sleep 1; echo done"))
		if err != nil {
			t.Fatal(err)
		}
		pid := firstEvent(t, s)
		for s.Receive() {
		}
		wantCode(t, s.Err(), connect.CodeDeadlineExceeded)
		cs, err := second.Connect(context.Background(), connect.NewRequest(&pb.ConnectRequest{Process: sel(pid)}))
		if err != nil {
			t.Fatal(err)
		}
		r := collect(t, cs)
		if r.stdout.String() != "done\n" || r.end.GetExitCode() != 0 {
			t.Fatalf("stdout %q end %v", r.stdout.String(), r.end)
		}
	})

	t.Run("two subscribers", func(t *testing.T) {
		t.Parallel()
		req := startReq("/bin/sh", "-c", "read x; echo \"$x\"")
		req.Msg.Stdin = ptr(true)
		s, err := first.Start(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		pid := firstEvent(t, s)
		cs, err := second.Connect(context.Background(), connect.NewRequest(&pb.ConnectRequest{Process: sel(pid)}))
		if err != nil {
			t.Fatal(err)
		}
		firstEvent(t, cs)
		// The subscription exists once Connect answered with the start event.
		if _, err := second.SendInput(context.Background(), connect.NewRequest(&pb.SendInputRequest{Process: sel(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("both\n")}}})); err != nil {
			t.Fatal(err)
		}
		r1 := &result{pid: pid}
		r2 := &result{pid: pid}
		for s.Receive() {
			r1.add(t, s.Msg().GetEvent())
		}
		for cs.Receive() {
			r2.add(t, cs.Msg().GetEvent())
		}
		if r1.stdout.String() != "both\n" || r2.stdout.String() != "both\n" || r1.end == nil || r2.end == nil {
			t.Fatalf("starter got %q %v, connector got %q %v", r1.stdout.String(), r1.end, r2.stdout.String(), r2.end)
		}
	})
}

func TestSelectorsAndErrors(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{})
	c := e.client()
	ctx := context.Background()

	req := startReq("sleep", "30")
	req.Msg.Tag = ptr("sleeper")
	s, err := c.Start(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	pid := firstEvent(t, s)

	dup := startReq("sleep", "30")
	dup.Msg.Tag = ptr("sleeper")
	ds, err := c.Start(ctx, dup)
	if err == nil {
		for ds.Receive() {
		}
		err = ds.Err()
	}
	wantCode(t, err, connect.CodeAlreadyExists, "sleeper")

	tests := []struct {
		name     string
		call     func() error
		code     connect.Code
		mentions []string
	}{
		{"unknown pid", func() error {
			_, err := c.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: sel(4000000), Signal: pb.Signal_SIGNAL_SIGKILL}))
			return err
		}, connect.CodeNotFound, []string{"4000000"}},
		{"unknown tag", func() error {
			s, err := c.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: tagSel("no-such-tag")}))
			if err != nil {
				return err
			}
			for s.Receive() {
			}
			return s.Err()
		}, connect.CodeNotFound, []string{"no-such-tag"}},
		{"empty selector", func() error {
			_, err := c.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{}))
			return err
		}, connect.CodeInvalidArgument, []string{"selector"}},
		{"empty cmd", func() error {
			s, err := c.Start(ctx, startReq(""))
			if err != nil {
				return err
			}
			for s.Receive() {
			}
			return s.Err()
		}, connect.CodeInvalidArgument, []string{"process.cmd"}},
		{"missing executable", func() error {
			s, err := c.Start(ctx, startReq("no-such-binary-xyz"))
			if err != nil {
				return err
			}
			for s.Receive() {
			}
			return s.Err()
		}, connect.CodeInvalidArgument, []string{"process.cmd", "no-such-binary-xyz"}},
		{"bad cwd", func() error {
			r := startReq("true")
			r.Msg.Process.Cwd = ptr("/no/such/dir")
			s, err := c.Start(ctx, r)
			if err != nil {
				return err
			}
			for s.Receive() {
			}
			return s.Err()
		}, connect.CodeInvalidArgument, []string{"process.cwd", "/no/such/dir"}},
		{"unknown user", func() error {
			r := startReq("true")
			r.Header().Set("Authorization", basicUser("no-such-user-xyz"))
			s, err := c.Start(ctx, r)
			if err != nil {
				return err
			}
			for s.Receive() {
			}
			return s.Err()
		}, connect.CodeInvalidArgument, []string{"no-such-user-xyz"}},
		{"malformed authorization", func() error {
			r := startReq("true")
			r.Header().Set("Authorization", "Bearer abc")
			s, err := c.Start(ctx, r)
			if err != nil {
				return err
			}
			for s.Receive() {
			}
			return s.Err()
		}, connect.CodeInvalidArgument, []string{"authorization"}},
		{"unspecified signal", func() error {
			_, err := c.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: sel(pid)}))
			return err
		}, connect.CodeInvalidArgument, []string{"signal"}},
		{"resize without pty", func() error {
			_, err := c.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: sel(pid), Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 10, Rows: 10}}}))
			return err
		}, connect.CodeFailedPrecondition, []string{"pty"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantCode(t, tc.call(), tc.code, tc.mentions...)
		})
	}

	if _, err := c.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: tagSel("sleeper"), Signal: pb.Signal_SIGNAL_SIGTERM})); err != nil {
		t.Fatalf("SendSignal by tag: %v", err)
	}
	if r := collect(t, s, pid); r.end.GetStatus() != "signal: terminated" {
		t.Fatalf("end = %v, want signal: terminated", r.end)
	}
}

func TestSignalReachesTheProcessGroup(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{Process: processOptsFastDrain()})
	c := e.client()
	ctx := context.Background()
	s, err := c.Start(ctx, startReq("/bin/sh", "-c", "sleep 60 & echo $!; wait"))
	if err != nil {
		t.Fatal(err)
	}
	pid := firstEvent(t, s)
	if !s.Receive() {
		t.Fatal(s.Err())
	}
	child := strings.TrimSpace(string(s.Msg().GetEvent().GetData().GetStdout()))
	if _, err := c.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: sel(pid), Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
		t.Fatal(err)
	}
	r := &result{pid: pid}
	for s.Receive() {
		r.add(t, s.Msg().GetEvent())
	}
	if r.end == nil {
		t.Fatalf("no end event: %v", s.Err())
	}
	var childPID int
	fmt.Sscan(child, &childPID)
	if childPID == 0 {
		t.Fatalf("no child pid in %q", child)
	}
	waitDead(t, childPID)
}

func TestPTY(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{})
	c := e.client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := startReq("/bin/sh", "-c", `trap 'echo "winch $(stty size)"' WINCH; echo "size $(stty size)"; while :; do read line && echo "in:$line"; done`)
	req.Msg.Pty = &pb.PTY{Size: &pb.PTY_Size{Cols: 100, Rows: 30}}
	req.Msg.Process.Envs = map[string]string{"TERM": "xterm"}
	s, err := c.Start(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	pid := firstEvent(t, s)
	var out bytes.Buffer
	waitFor := func(want string) {
		t.Helper()
		for !strings.Contains(out.String(), want) {
			if !s.Receive() {
				t.Fatalf("stream ended waiting for %q in %q: %v", want, out.String(), s.Err())
			}
			if ev := s.Msg().GetEvent(); ev.GetData() != nil {
				if ev.GetData().GetStdout() != nil || ev.GetData().GetStderr() != nil {
					t.Fatalf("pty process sent stdout/stderr, want pty output")
				}
				out.Write(ev.GetData().GetPty())
			}
		}
	}
	waitFor("size 30 100")
	if _, err := c.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: sel(pid), Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 120, Rows: 40}}})); err != nil {
		t.Fatalf("Update: %v", err)
	}
	// The trap runs once the shell is back from read; typing a line does that.
	if _, err := c.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: sel(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: []byte("typed\n")}}})); err != nil {
		t.Fatalf("SendInput pty: %v", err)
	}
	waitFor("winch 40 120")
	waitFor("in:typed")
	if _, err := c.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: sel(pid), Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
		t.Fatal(err)
	}
	for s.Receive() {
		if end := s.Msg().GetEvent().GetEnd(); end != nil {
			if end.GetStatus() != "signal: killed" {
				t.Fatalf("end = %v", end)
			}
			return
		}
	}
	t.Fatalf("no end event: %v", s.Err())
}

func TestKeepalive(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{})
	for _, proto := range protocols[:3] {
		t.Run(proto.name, func(t *testing.T) {
			t.Parallel()
			// Three keepalives on a quiet stream at 0.1 s intervals, however
			// slow a loaded machine makes them come, then the process goes.
			c := proto.client(e.url)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			req := startReq("sleep", "60")
			req.Header().Set(KeepaliveHeader, "0.1")
			s, err := c.Start(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			pid := firstEvent(t, s)
			r := &result{pid: pid}
			for r.keepalives < 3 && s.Receive() {
				r.add(t, s.Msg().GetEvent())
			}
			if r.keepalives < 3 || r.end != nil {
				t.Fatalf("%d keepalive events, end %v, stream error %v", r.keepalives, r.end, s.Err())
			}
			if _, err := c.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: sel(pid), Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
				t.Fatal(err)
			}
			if r := collect(t, s, pid); r.end == nil {
				t.Fatal("no end event after SIGKILL")
			}
			quiet := run(t, c, startReq("sleep", "0.3"))
			if quiet.keepalives != 0 {
				t.Fatalf("%d keepalives with the 50 s default", quiet.keepalives)
			}
		})
	}
}

func TestKeepaliveInterval(t *testing.T) {
	t.Parallel()
	tests := map[string]time.Duration{
		"":      defaultKeepalive,
		"50":    50 * time.Second,
		"1":     time.Second,
		"0.5":   500 * time.Millisecond,
		"0":     defaultKeepalive,
		"-3":    defaultKeepalive,
		"NaN":   defaultKeepalive,
		"1e300": defaultKeepalive,
		"abc":   defaultKeepalive,
		"1e-9":  minKeepalive,
	}
	for in, want := range tests {
		if got := keepaliveInterval(in); got != want {
			t.Errorf("keepaliveInterval(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestShutdownKillsProcessGroups(t *testing.T) {
	t.Parallel()
	srv := New(Options{ShutdownTimeout: 5 * time.Second})
	ln, err := listenLoopback()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer cancel()
	c := protocols[0].client("http://" + ln.Addr().String())
	s, err := c.Start(context.Background(), startReq("/bin/sh", "-c", "sleep 60 & echo $!; wait"))
	if err != nil {
		t.Fatal(err)
	}
	pid := firstEvent(t, s)
	if !s.Receive() {
		t.Fatal(s.Err())
	}
	var child int
	fmt.Sscan(strings.TrimSpace(string(s.Msg().GetEvent().GetData().GetStdout())), &child)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	waitDead(t, int(pid))
	waitDead(t, child)
	if _, err := ln.Accept(); err == nil {
		t.Fatal("listener still accepting after shutdown")
	}
}
