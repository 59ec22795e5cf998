package main

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/protocol"
	"atelier/core/request"
)

func TestGenerateDefaultsComeFromCore(t *testing.T) {
	o, _, ok := parseGenerate([]string{"--prompt", "a lighthouse"}, io.Discard, io.Discard)
	require.True(t, ok)
	want := request.DefaultRequest()
	want.Prompt = "a lighthouse"
	assert.Equal(t, want, o.req)
	assert.False(t, o.json)
}

func TestGenerateFlagsSetTheRequest(t *testing.T) {
	o, _, ok := parseGenerate([]string{"--prompt", "p", "--negative", "n", "--model", "/m", "--scheduler", "ddim",
		"--steps", "9", "--cfg", "2.5", "--width", "128", "--height", "192", "--seed", "42", "--batch", "3",
		"--out", "copies", "--json"}, io.Discard, io.Discard)
	require.True(t, ok)
	assert.Equal(t, request.Request{Prompt: "p", NegativePrompt: "n", Model: "/m", Scheduler: "ddim", Steps: 9, CFG: 2.5,
		Width: 128, Height: 192, Seed: 42, BatchSize: 3}, o.req)
	assert.Equal(t, "copies", o.out)
	assert.True(t, o.json)
}

// Every field that validation can name must map to the flag that sets it, or
// the user reads a field name they cannot type.
func TestEveryValidatedFieldHasAFlag(t *testing.T) {
	bad := request.Request{Scheduler: "nope", CFG: -1, Seed: -2, BatchSize: 99}
	err := bad.Validate()
	v, ok := request.AsValidation(err)
	require.True(t, ok, err)
	require.GreaterOrEqual(t, len(v.Fields), 8)
	for _, f := range v.Fields {
		assert.Contains(t, flagForField, f.Field)
	}
}

func TestPlainProgressStaysShort(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf)
	require.False(t, p.tty, "a buffer is not a terminal")
	p.event(protocol.Progress{Stage: "encoding"})
	for i := 0; i <= 150; i++ {
		p.event(protocol.Progress{Stage: "denoising", Step: i, Total: 150})
	}
	p.event(protocol.Progress{Stage: "decoding"})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	assert.LessOrEqual(t, len(lines), 13, buf.String())
	assert.Contains(t, buf.String(), "denoising 150/150")
	assert.Contains(t, buf.String(), "decoding")
	assert.NotContains(t, buf.String(), "\r", "no terminal control codes in plain output")
}

func TestProgressShowsTheWorkersStart(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf)
	p.event(protocol.Loading{Message: "launching Python"})
	p.event(protocol.Loading{Message: "importing torch"})
	p.event(protocol.Progress{Stage: "encoding"})
	assert.Equal(t, "starting the worker: launching Python\nencoding prompt (0.0s)\n", buf.String(), "a log gets the start's first line")
	assert.True(t, p.loaded)

	buf.Reset()
	p = &progress{w: &buf, tty: true}
	p.event(protocol.Loading{Message: "launching Python"})
	p.event(protocol.Loading{Message: "importing torch"})
	p.finish()
	assert.Equal(t, "\r\033[Kstarting worker     launching Python\r\033[Kstarting worker     importing torch\r\033[K", buf.String(),
		"a terminal shows the start as a stage, redrawn in place")
}

func TestDoneLineSaysTheWaitNextToTheJobTime(t *testing.T) {
	m := &protocol.Metrics{TotalS: 0.52, ItS: 8, Device: "cpu", Dtype: "float32"}
	assert.Equal(t, "done in 0.5s (8.00 it/s on cpu, float32); 7.3s in all, the worker's start included",
		doneLineText(m, 7300*time.Millisecond, true))
	assert.Equal(t, "done in 0.5s (on cpu); 0.6s in all", doneLineText(&protocol.Metrics{TotalS: 0.52, Device: "cpu"}, 600*time.Millisecond, false))
}

func TestTerminalProgressRedrawsOneLine(t *testing.T) {
	var buf bytes.Buffer
	p := &progress{w: &buf, tty: true}
	p.event(protocol.Progress{Stage: "denoising", Step: 15, Total: 30, ElapsedS: 2})
	p.finish()
	out := buf.String()
	assert.Contains(t, out, "\r\033[K")
	assert.Contains(t, out, "["+strings.Repeat("#", 15)+strings.Repeat("-", 15)+"] 15/30")
	assert.NotContains(t, out, "\n")
}
