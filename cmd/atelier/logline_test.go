package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// A log record on a terminal starts by clearing the line a progress bar was
// drawn on, so the two do not share a line.
func TestLogRecordClearsTheProgressLine(t *testing.T) {
	var out bytes.Buffer
	out.WriteString("\r\033[Kdenoising [---] 4/8") // a bar drawn in place, no newline
	slog.New(slog.NewTextHandler(clearLineWriter{&out}, nil)).Warn("worker stopped responding")
	last := out.String()[strings.LastIndex(out.String(), "4/8")+len("4/8"):]
	assert.True(t, strings.HasPrefix(last, "\r\033[K"), "the record must start on a cleared line: %q", last)
	assert.Contains(t, last, `msg="worker stopped responding"`)
}
