package bridge

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"atelier/core/failure"
	"atelier/core/protocol"
)

const (
	// stderrLineMax truncates one stderr line; tracebacks have short lines, and a huge
	// one (a tensor dump) must not fill the memory of the ring.
	stderrLineMax = 4096
	// writeTimeout bounds one write to the worker's stdin: a worker that stops reading
	// it is stuck, and the job must not hang with it.
	writeTimeout = 10 * time.Second
	// drainGrace is how long the readers may keep reading after the worker exited. A
	// grandchild that inherited the pipes could keep them open forever.
	drainGrace = 2 * time.Second
)

// worker is one process of the Python worker and the goroutines that watch it.
type worker struct {
	seq  int64
	cmd  *exec.Cmd
	stop context.CancelFunc // closes stdin; exec kills the process after ExitGrace

	stdin  *os.File
	wmu    sync.Mutex // one line at a time on stdin
	stdout *os.File
	stderr *os.File
	tail   *ring

	events chan protocol.Message // loading and hello, until the handshake ends
	hsDone chan struct{}         // closed when the handshake ends, either way

	done       chan struct{} // closed by the reaper after cmd.Wait
	waitErr    error         // set before done closes
	stdoutDone chan struct{}
	stderrDone chan struct{}
	exited     chan struct{} // closed after the exit was handled: output read, job ended
	heard      atomic.Int64  // lines read from stdout: the silence watch sees it move

	// Guarded by Bridge.mu.
	ready   bool              // the handshake succeeded
	beats   bool              // its hello lists the heartbeat feature
	broken  bool              // Atelier is stopping it: its later lines are ignored
	gone    bool              // the exit was handled
	failure *failure.JobError // why Atelier stopped it, for the handshake's error
	jobID   string            // the job it runs or last ran, for its log lines
	gen     int               // the Reconfigure generation it was started with
}

func (w *worker) pid() int {
	if w.cmd.Process == nil {
		return 0
	}
	return w.cmd.Process.Pid
}

// spawn starts one worker process with the three pipes and the goroutines that read
// them and reap it. The caller holds b.mu.
func (b *Bridge) spawn(argv, env []string, id string) (*worker, error) {
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	setProcAttr(cmd)

	// Plain os.Pipe files rather than cmd.StdoutPipe: Wait then never waits on our read
	// ends, so the reaper can report an exit while a reader is still draining lines,
	// and reads and writes can have deadlines.
	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	pipe := func() (r, w *os.File, err error) {
		r, w, err = os.Pipe()
		if err == nil {
			files = append(files, r, w)
		}
		return r, w, err
	}
	inR, inW, err := pipe()
	if err != nil {
		cancel()
		return nil, err
	}
	outR, outW, err := pipe()
	if err != nil {
		closeAll()
		cancel()
		return nil, err
	}
	errR, errW, err := pipe()
	if err != nil {
		closeAll()
		cancel()
		return nil, err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW

	b.seq++
	w := &worker{
		seq: b.seq, cmd: cmd, stop: cancel,
		stdin: inW, stdout: outR, stderr: errR, tail: newRing(stderrTailLines),
		events: make(chan protocol.Message, 16), hsDone: make(chan struct{}),
		done: make(chan struct{}), stdoutDone: make(chan struct{}), stderrDone: make(chan struct{}),
		exited: make(chan struct{}), jobID: id,
	}
	// Stopping gently is closing stdin: the worker exits when it reads EOF. If it has
	// not exited WaitDelay later, exec kills it.
	cmd.Cancel = func() error {
		if err := inW.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			return err
		}
		return nil
	}
	cmd.WaitDelay = b.cfg.ExitGrace

	if err := cmd.Start(); err != nil {
		closeAll()
		cancel()
		return nil, err
	}
	// The child has its own copies now; ours would hide its EOF from the readers.
	inR.Close()
	outW.Close()
	errW.Close()

	go b.reap(w)
	go b.readStderr(w)
	go b.readStdout(w)
	return w, nil
}

// reap waits for the process, then makes sure the readers end.
func (b *Bridge) reap(w *worker) {
	w.waitErr = w.cmd.Wait()
	close(w.done)
	w.stop() // releases the exec context
	t := time.NewTimer(drainGrace)
	defer t.Stop()
	for _, ch := range []chan struct{}{w.stdoutDone, w.stderrDone} {
		select {
		case <-ch:
		case <-t.C:
			w.stdout.Close()
			w.stderr.Close()
			return
		}
	}
}

// kill stops the process at once; its exit is reported as usual.
func (w *worker) kill() {
	if w.cmd.Process != nil {
		_ = w.cmd.Process.Kill() // ErrProcessDone when it has already exited
	}
}

// send writes one message as one line.
func (w *worker) send(m protocol.Message) error {
	line, err := protocol.Encode(m)
	if err != nil {
		return err
	}
	w.wmu.Lock()
	defer w.wmu.Unlock()
	_ = w.stdin.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err = w.stdin.Write(append(line, '\n'))
	return err
}

func (b *Bridge) readStderr(w *worker) {
	defer close(w.stderrDone)
	r := bufio.NewReader(w.stderr)
	for {
		line, tooLong, err := readLine(r, stderrLineMax)
		if len(line) > 0 {
			s := strings.ToValidUTF8(string(line), "\uFFFD")
			if tooLong {
				s += " …"
			}
			w.tail.add(s)
			b.log(w.currentJob(b)).Debug("worker stderr", "pid", w.pid(), "line", s)
		}
		if err != nil {
			return
		}
	}
}

func (w *worker) currentJob(b *Bridge) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return w.jobID
}

func (b *Bridge) readStdout(w *worker) {
	r := bufio.NewReaderSize(w.stdout, 64<<10)
	for {
		line, tooLong, err := readLine(r, protocol.MaxLineBytes)
		if len(line) > 0 {
			w.heard.Add(1)
		}
		switch {
		case tooLong:
			b.unreadable(w, line, fmt.Errorf("a line longer than the protocol's %d-byte limit", protocol.MaxLineBytes))
		case len(line) > 0 || err == nil:
			b.handleLine(w, line)
		}
		if err != nil {
			break
		}
	}
	close(w.stdoutDone)
	// A worker that closed its stdout but lives on cannot be talked to any more.
	select {
	case <-w.done:
	case <-time.After(b.cfg.ExitGrace):
		w.kill()
		<-w.done
	}
	// The exit is handled only once stderr is read to its end (the reaper bounds the
	// wait), so that a crash report holds the worker's last words.
	<-w.stderrDone
	b.workerExited(w)
	close(w.exited)
}

// readLine reads one line without its line ending. A line longer than max comes back
// cut to max bytes, with tooLong set, and the rest of it is skipped.
func readLine(r *bufio.Reader, max int) (line []byte, tooLong bool, err error) {
	for {
		chunk, err := r.ReadSlice('\n')
		if !tooLong {
			line = append(line, chunk...)
			if len(line) > max+2 { // +2: the line ending is not part of the limit
				line, tooLong = line[:max:max], true
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if !tooLong {
			line = trimEOL(line)
		}
		if err == io.EOF && len(line) == 0 && !tooLong {
			return nil, false, io.EOF
		}
		return line, tooLong, err
	}
}

func trimEOL(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
		if n := len(b); n > 0 && b[n-1] == '\r' {
			b = b[:n-1]
		}
	}
	return b
}

// exitReason says in words how the process ended.
func exitReason(w *worker) string {
	ps := w.cmd.ProcessState
	if ps == nil {
		return fmt.Sprintf("not started: %v", w.waitErr)
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		if ws.Signal() == syscall.SIGKILL {
			return "killed by SIGKILL"
		}
		return fmt.Sprintf("stopped by signal %d, %v", int(ws.Signal()), ws.Signal())
	}
	return fmt.Sprintf("exit status %d", ps.ExitCode())
}

// killedHint explains a SIGKILL that Atelier did not send.
func killedHint(w *worker) string {
	if ps := w.cmd.ProcessState; ps != nil {
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return " The system may have run out of memory: try a smaller size or batch."
		}
	}
	return ""
}
