// Package proc runs the benchmark's child processes: fio, gnuplot and
// the servers under test (nbdkit, qemu-nbd), each in its own process group
// with a parent-death signal, stopped in order on Ctrl-C.
package proc

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Every child runs in its own process group, so a Ctrl-C on the terminal
// reaches the benchmark alone and it stops the children in order; and
// with a parent-death signal, so none outlives a benchmark that was killed.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// Run runs cmd to completion. When ctx ends first, the command's process
// group gets SIGINT, then SIGKILL 5 s later.
func Run(ctx context.Context, cmd *exec.Cmd, started ...func(pid int)) error {
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		return err
	}
	for _, f := range started {
		f(cmd.Process.Pid)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	pid := cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGINT)
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	return <-done
}

// Proc is a long-lived child: a server under test. Its output goes to a log
// file in the target's directory.
type Proc struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error // valid once done is closed
	stop    sync.Once
}

// Start starts argv with output to logPath.
func Start(name, logPath string, argv ...string) (*Proc, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer log.Close() // the child has its own copy
	fmt.Fprintf(log, "# %s\n", strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// PID is the child's process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the child has exited, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Stop sends SIGTERM to the child's process group, waits up to 5 s, then
// sends SIGKILL, and returns once the child has been reaped.
func (p *Proc) Stop() {
	p.stop.Do(func() {
		pid := p.PID()
		select {
		case <-p.done:
		default:
			_ = syscall.Kill(-pid, syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				<-p.done
			}
		}
		// Anything left in the group (helpers a server forked) goes too.
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	})
}

// LogTail is the end of the child's log, for error messages.
func (p *Proc) LogTail() string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return ""
	}
	return Tail(string(b))
}

// WaitListen waits until addr accepts a connection, p exits, or timeout.
func WaitListen(ctx context.Context, p *Proc, network, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if exited, err := p.Exited(); exited {
			return fmt.Errorf("%s exited before listening on %s (%v)%s", p.Name, addr, err, p.LogTail())
		}
		c, err := net.DialTimeout(network, addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not listening on %s after %s: %w%s", p.Name, addr, timeout, err, p.LogTail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Tail returns the last lines of a tool's output, for an error message:
// ": line | line", or "" for none.
func Tail(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	lines := strings.Split(s, "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return ": " + strings.Join(lines, " | ")
}

// Gone says how the child ended, with its log's tail; nil while it runs.
func (p *Proc) Gone() error {
	if exited, err := p.Exited(); exited {
		return fmt.Errorf("%s exited (%v)%s", p.Name, err, p.LogTail())
	}
	return nil
}
