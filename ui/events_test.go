package ui

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"atelier/core/jobs"
	"atelier/core/protocol"
)

func TestEventOfMessage(t *testing.T) {
	for _, tc := range []struct {
		m    protocol.Message
		want event
	}{
		{protocol.Loading{Message: "importing torch"}, event{kind: evLoading, note: "importing torch"}},
		{protocol.Hello{Device: "cuda"}, event{kind: evHello, device: "cuda"}},
		{protocol.Progress{Stage: "denoising", Step: 3, Total: 8, ElapsedS: 1.5},
			event{kind: evProgress, stage: "denoising", step: 3, total: 8, elapsed: 1.5}},
		{protocol.Preview{Step: 4, Path: "preview.png"}, event{kind: evPreview, step: 4, preview: "preview.png"}},
		{protocol.Accepted{}, event{kind: evOther}},
		{protocol.Result{}, event{kind: evOther}},
	} {
		assert.Equal(t, tc.want, eventOf(tc.m), tc.m.Type())
	}
}

func TestProgressEventFoldsIntoTheQueueETA(t *testing.T) {
	direct, folded := jobs.NewLive(), jobs.NewLive()
	for _, m := range []protocol.Message{
		protocol.Progress{Stage: "encoding", ElapsedS: 0.5},
		protocol.Progress{Stage: "denoising", Step: 0, Total: 10, ElapsedS: 1},
		protocol.Preview{Step: 1, Path: "p.png"},
		protocol.Progress{Stage: "denoising", Step: 4, Total: 10, ElapsedS: 3},
	} {
		direct.Update(m)
		eventOf(m).foldInto(&folded)
	}
	assert.Equal(t, direct, folded)
}
