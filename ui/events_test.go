package ui

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"atelier/core"
)

func TestEventOfMessage(t *testing.T) {
	for _, tc := range []struct {
		m    core.Message
		want event
	}{
		{core.Message{Type: core.MsgLoading, Message: "importing torch"}, event{kind: evLoading, note: "importing torch"}},
		{core.Message{Type: core.MsgHello, Device: "cuda"}, event{kind: evHello, device: "cuda"}},
		{core.Message{Type: core.MsgProgress, Stage: "denoising", Step: 3, Total: 8, ElapsedS: 1.5},
			event{kind: evProgress, stage: "denoising", step: 3, total: 8, elapsed: 1.5}},
		{core.Message{Type: core.MsgPreview, Step: 4, Path: "preview.png"}, event{kind: evPreview, step: 4, preview: "preview.png"}},
		{core.Message{Type: core.MsgAccepted}, event{kind: evOther}},
		{core.Message{Type: core.MsgResult}, event{kind: evOther}},
	} {
		assert.Equal(t, tc.want, eventOf(tc.m), tc.m.Type)
	}
}

func TestProgressEventFoldsIntoTheQueueETA(t *testing.T) {
	direct, folded := core.NewLive(), core.NewLive()
	for _, m := range []core.Message{
		{Type: core.MsgProgress, Stage: "encoding", ElapsedS: 0.5},
		{Type: core.MsgProgress, Stage: "denoising", Step: 0, Total: 10, ElapsedS: 1},
		{Type: core.MsgPreview, Step: 1, Path: "p.png"},
		{Type: core.MsgProgress, Stage: "denoising", Step: 4, Total: 10, ElapsedS: 3},
	} {
		direct.Update(m)
		eventOf(m).foldInto(&folded)
	}
	assert.Equal(t, direct, folded)
}
