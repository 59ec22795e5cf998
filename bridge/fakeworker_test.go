package bridge

import (
	"bufio"
	"context"
	"fmt"
	"image"
	"image/png"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"atelier/core/failure"
	"atelier/core/protocol"
	"atelier/core/request"
)

// The fake worker is this test binary run again with fakeModeEnv naming a file whose
// text picks its behaviour, e.g. "mode=crash step=20ms". A test rewrites the file to
// change what the NEXT worker process does, so one Bridge can meet a fault and then
// show that it recovers.
const fakeModeEnv = "ATELIER_FAKE_WORKER_MODE_FILE"

// fakeParentEnv makes this binary a stand-in for the Atelier app: it starts a fake
// worker through a Bridge, prints the worker's pid and waits to be killed.
const fakeParentEnv = "ATELIER_FAKE_PARENT_MODE_FILE"

func TestMain(m *testing.M) {
	if modeFile := os.Getenv(fakeModeEnv); modeFile != "" {
		os.Exit(fakeWorker(modeFile))
	}
	if modeFile := os.Getenv(fakeParentEnv); modeFile != "" {
		os.Exit(fakeParent(modeFile))
	}
	os.Exit(runTests(m))
}

func fakeParent(modeFile string) int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	os.Unsetenv(fakeParentEnv)
	b := New(Config{Command: []string{exe}, Env: []string{fakeModeEnv + "=" + modeFile}})
	if err := b.Start(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(b.pid())
	time.Sleep(time.Hour)
	return 0
}

type fakeOpts struct {
	mode      string        // healthy, crash, garbage, longline, wrongdir, garbagestart, stubborn, hang, diestart, badproto, slowstart, deaf, freeze
	step      time.Duration // time per denoising step
	beat      time.Duration // the heartbeat interval while a job runs
	noBeat    bool          // nobeat=1: an older worker, without the heartbeat feature
	loadFor   time.Duration // slowstart: how long it keeps printing loading
	loadEvery time.Duration // slowstart: the gap between loading lines
	protocol  int           // badproto: the version in hello
	envOut    string        // write the worker's environment here
}

func parseFakeOpts(text string) fakeOpts {
	o := fakeOpts{mode: "healthy", step: 5 * time.Millisecond, beat: 20 * time.Millisecond, loadEvery: 100 * time.Millisecond, protocol: 2}
	for _, kv := range strings.Fields(text) {
		k, v, _ := strings.Cut(kv, "=")
		d, _ := time.ParseDuration(v)
		switch k {
		case "mode":
			o.mode = v
		case "step":
			o.step = d
		case "beat":
			o.beat = d
		case "nobeat":
			o.noBeat = v == "1"
		case "load":
			o.loadFor = d
		case "every":
			o.loadEvery = d
		case "protocol":
			fmt.Sscan(v, &o.protocol)
		case "env":
			o.envOut = v
		}
	}
	return o
}

type fake struct {
	o    fakeOpts
	mu   sync.Mutex // one line at a time on stdout, as the real worker's writer lock
	out  *bufio.Writer
	canc sync.Map // ids that got a cancel
}

func (f *fake) raw(line string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.out.WriteString(line + "\n")
	f.out.Flush()
}

func (f *fake) send(m protocol.Message) {
	line, err := protocol.Encode(m)
	if err != nil {
		f.logf("fake worker bug: %v", err)
		os.Exit(70)
	}
	f.raw(string(line))
}

func (f *fake) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "fake: "+format+"\n", args...)
}

func fakeWorker(modeFile string) int {
	text, err := os.ReadFile(modeFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake: cannot read mode file:", err)
		return 71
	}
	f := &fake{o: parseFakeOpts(string(text)), out: bufio.NewWriter(os.Stdout)}
	// As in Python, a write to a closed pipe is an error, not death by SIGPIPE: only
	// the bridge may end this process.
	signal.Ignore(syscall.SIGPIPE)
	f.logf("starting in mode %q (pid %d)", f.o.mode, os.Getpid())
	if f.o.envOut != "" {
		var env []string
		for _, k := range []string{"PYTHONPATH", "PYTHONUNBUFFERED", "ATELIER_CACHE_DIR", "HF_HUB_OFFLINE", "FAKE_EXTRA", "ATELIER_PARENT_PID"} {
			env = append(env, k+"="+os.Getenv(k))
		}
		os.WriteFile(f.o.envOut, []byte(strings.Join(env, "\n")), 0o644)
	}
	switch f.o.mode {
	case "hang":
		f.logf("importing torch")
		time.Sleep(time.Hour) // says nothing on stdout, ignores stdin
		return 0
	case "diestart":
		f.logf("importing torch")
		fmt.Fprintln(os.Stderr, "ModuleNotFoundError: No module named 'torch'")
		return 1
	case "slowstart":
		for end := time.Now().Add(f.o.loadFor); time.Now().Before(end); {
			f.send(protocol.Loading{Message: "importing torch (slowly)"})
			time.Sleep(f.o.loadEvery)
		}
	case "garbagestart":
		f.raw("Loading checkpoint shards: 100%")
		time.Sleep(time.Hour)
	}
	f.send(protocol.Loading{Message: "importing torch"})
	hello := protocol.Hello{Protocol: protocol.ProtocolVersion, WorkerVersion: "0.0.0-fake",
		Device: "cpu", Dtype: "float32", Devices: []protocol.Device{{Name: "fake cpu", Kind: "cpu"}},
		Capabilities: &protocol.Capabilities{Schedulers: request.Schedulers, ControlNetTypes: []string{}, Features: []string{"txt2img", protocol.FeatureHeartbeat}},
		Versions:     map[string]string{"python": "fake", "torch": "fake", "diffusers": "fake"}}
	if f.o.mode == "badproto" {
		hello.Protocol = f.o.protocol
	}
	if f.o.noBeat {
		hello.Capabilities.Features = []string{"txt2img"}
	}
	f.send(hello)

	// Like the real worker, a separate reader takes cancel and ping while a job runs.
	jobs := make(chan protocol.Message)
	go func() {
		defer close(jobs)
		sc := bufio.NewScanner(os.Stdin)
		sc.Buffer(make([]byte, 64<<10), protocol.MaxLineBytes+2)
		for sc.Scan() {
			m, err := protocol.Decode(sc.Bytes())
			if err != nil {
				f.send(protocol.Error{Code: failure.ErrInvalidRequest, Message: "cannot read line: " + err.Error()})
				continue
			}
			switch m := m.(type) {
			case protocol.Cancel:
				f.logf("[%s] cancel", m.ID)
				f.canc.Store(m.ID, true)
			case protocol.Ping:
				f.send(protocol.Pong{ID: m.ID})
			default:
				jobs <- m
			}
		}
	}()
	for m := range jobs {
		switch m := m.(type) {
		case protocol.Generate:
			if f.o.mode == "badproto" || f.o.mode == "deaf" {
				continue
			}
			f.run(m.ID, *m.Request)
		case protocol.Shutdown:
			return 0
		}
	}
	if f.o.mode == "deaf" {
		f.logf("stdin closed, but I stay")
		time.Sleep(time.Hour)
	}
	f.logf("stdin closed; exiting")
	return 0
}

// beatWhileRunning sends heartbeats for job id until the returned function is called,
// as the real worker's heartbeat thread does, whatever the job loop is doing.
func (f *fake) beatWhileRunning(id string) (stop func()) {
	if f.o.noBeat {
		return func() {}
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(f.o.beat)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				f.send(protocol.Heartbeat{ID: id})
			}
		}
	}()
	return func() { close(done); <-stopped }
}

func (f *fake) run(id string, req request.Request) {
	stopBeat := f.beatWhileRunning(id)
	final := f.work(id, req)
	stopBeat()
	f.send(final)
}

// work runs one job and returns its final message.
func (f *fake) work(id string, req request.Request) protocol.Message {
	start := time.Now()
	elapsed := func() float64 { return time.Since(start).Seconds() }
	f.logf("[%s] generating %d steps", id, req.Steps)
	f.send(protocol.Accepted{ID: id})
	f.send(protocol.Progress{ID: id, Stage: "loading_model", ElapsedS: elapsed()})
	if f.o.mode == "stubborn" {
		f.send(protocol.Progress{ID: id, Stage: "denoising", Step: 1, Total: req.Steps, ElapsedS: elapsed()})
		f.logf("[%s] busy, not listening", id)
		time.Sleep(time.Hour)
	}
	for step := 1; step <= req.Steps; step++ {
		time.Sleep(f.o.step)
		if _, ok := f.canc.Load(id); ok {
			return protocol.Error{ID: id, Code: failure.ErrCancelled, Message: "the job was cancelled"}
		}
		f.send(protocol.Progress{ID: id, Stage: "denoising", Step: step, Total: req.Steps, ElapsedS: elapsed()})
		if step == 2 {
			switch f.o.mode {
			case "crash":
				f.logf("[%s] Traceback (most recent call last):", id)
				fmt.Fprintln(os.Stderr, "RuntimeError: fake worker crashed on purpose")
				os.Exit(3)
			case "garbage":
				f.raw("this is not json")
			case "longline":
				f.raw(`{"type":"loading","message":"` + strings.Repeat("x", protocol.MaxLineBytes) + `"}`)
			case "wrongdir":
				f.raw(`{"type":"shutdown"}`)
			case "freeze":
				// As kill -STOP does: every thread stops, the heartbeat's too.
				f.logf("[%s] stopping myself", id)
				_ = syscall.Kill(os.Getpid(), syscall.SIGSTOP)
			}
		}
		if req.PreviewEvery > 0 && step%req.PreviewEvery == 0 {
			p := filepath.Join(req.OutputDir, ".preview-"+id+".png")
			writePNG(p, 8, 8)
			f.send(protocol.Preview{ID: id, Step: step, Path: p})
		}
	}
	batch := max(req.BatchSize, 1)
	var images []protocol.ImageResult
	for i := range batch {
		p := filepath.Join(req.OutputDir, fmt.Sprintf("%s-%d.png", id, i))
		if err := writePNG(p, req.Width, req.Height); err != nil {
			return protocol.Error{ID: id, Code: failure.ErrInternal, Message: "cannot write the image", Detail: err.Error()}
		}
		f.send(protocol.Progress{ID: id, Stage: "saving", Step: i + 1, Total: batch, ElapsedS: elapsed()})
		images = append(images, protocol.ImageResult{Path: p, Seed: req.Seed + int64(i), Width: req.Width, Height: req.Height})
	}
	return protocol.Result{ID: id, Images: images,
		Metrics: &protocol.Metrics{TotalS: elapsed(), Device: "cpu", Dtype: "float32"}}
}

func writePNG(path string, w, h int) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	file, err := os.Create(path)
	if err != nil {
		return err
	}
	defer file.Close()
	return png.Encode(file, image.NewGray(image.Rect(0, 0, w, h)))
}
