package ui

import (
	"strconv"
	"testing"
	"time"

	"atelier/core/request"

	"fyne.io/fyne/v2/test"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFirstRunUsesTinyModelAndSaysWhatItIs(t *testing.T) {
	s := newTestStudio(t, &fakeGen{}, &memHistory{})
	assert.Equal(t, request.TinyModel, s.form.model.entry.Text)
	assert.Equal(t, tinyHint, s.form.model.hint.Text)
	s.form.model.entry.SetText("/models/sdxl-base")
	assert.Equal(t, folderHint, s.form.model.hint.Text)
}

func TestFormMapsToRequest(t *testing.T) {
	s := newTestStudio(t, &fakeGen{}, &memHistory{})
	f := s.form
	f.prompts.prompt.SetText("")
	test.Type(f.prompts.prompt, "a red fox in snow")
	f.prompts.negative.SetText("  blurry  ")
	f.model.entry.SetText(" /models/sdxl ")
	f.sampling.scheduler.SetSelected("DPM++ 2M")
	f.steps.steps.SetText("25")
	f.steps.cfg.SetText("6.5")
	f.size.preset.SetSelected(sizePresets[3].label) // 1344 × 768
	f.seed.seed.SetText("1234")
	f.batch.batchSize.SetSelected("3")

	req, verr := f.request()
	require.Nil(t, verr)
	assert.Equal(t, request.Request{
		Prompt: "a red fox in snow", NegativePrompt: "blurry", Model: "/models/sdxl",
		Scheduler: "dpmpp_2m", Steps: 25, CFG: 6.5, Width: 1344, Height: 768, Seed: 1234,
		BatchSize: 3, PreviewEvery: 1,
	}, req)
	// The sliders follow the entries they are linked to.
	assert.Equal(t, 25.0, f.steps.stepsSlider.Value)
	assert.Equal(t, 6.5, f.steps.cfgSlider.Value)
}

func TestSliderWritesEntry(t *testing.T) {
	s := newTestStudio(t, &fakeGen{}, &memHistory{})
	s.form.steps.stepsSlider.SetValue(42)
	s.form.steps.cfgSlider.SetValue(7.5)
	assert.Equal(t, "42", s.form.steps.steps.Text)
	assert.Equal(t, "7.5", s.form.steps.cfg.Text)
}

func TestSizePresetsAndCustom(t *testing.T) {
	s := newTestStudio(t, &fakeGen{}, &memHistory{})
	f := s.form
	f.size.preset.SetSelected(sizePresets[6].label) // 832 × 1216
	assert.Equal(t, "832", f.size.width.Text)
	assert.Equal(t, "1216", f.size.height.Text)

	f.size.width.SetText("640")
	assert.Equal(t, customSize, f.size.preset.Selected, "a size that is no preset shows as Custom")
	f.size.width.SetText("1024")
	f.size.height.SetText("1024")
	assert.Equal(t, sizePresets[0].label, f.size.preset.Selected, "typing a preset's size selects it")

	f.size.width.SetText("768")
	f.size.height.SetText("1344")
	test.Tap(f.size.swap)
	assert.Equal(t, "1344", f.size.width.Text)
	assert.Equal(t, "768", f.size.height.Text)
}

func TestRandomSeedButton(t *testing.T) {
	s := newTestStudio(t, &fakeGen{}, &memHistory{})
	f := s.form
	seen := map[int64]bool{}
	for i := 0; i < 3; i++ {
		test.Tap(f.seed.dice)
		seed, err := strconv.ParseInt(f.seed.seed.Text, 10, 64)
		require.NoError(t, err, "the dice puts a number in the seed field")
		assert.GreaterOrEqual(t, seed, int64(0))
		assert.LessOrEqual(t, seed, request.MaxSeed)
		seen[seed] = true
		req, verr := f.request()
		require.Nil(t, verr)
		assert.Equal(t, seed, req.Seed, "the request carries the seed shown")
	}
	assert.Len(t, seen, 3, "each roll gives a new seed")

	test.Tap(f.seed.anySeed)
	req, verr := f.request()
	require.Nil(t, verr)
	assert.Equal(t, int64(-1), req.Seed, "Any means a random seed per job")

	f.seed.seed.SetText("")
	req, verr = f.request()
	require.Nil(t, verr)
	assert.Equal(t, int64(-1), req.Seed, "an empty seed also means random")
}

func TestFormReportsEachBadFieldByName(t *testing.T) {
	cases := []struct {
		field, text, want string
	}{
		{fSteps, "0", "Steps must be between 1 and 150, got 0"},
		{fSteps, "ten", `Steps must be a whole number, got "ten"`},
		{fCFG, "31", "CFG scale must be between 0 and 30, got 31"},
		{fCFG, "x", `CFG scale must be a number, got "x"`},
		{fWidth, "63", "Width must be a multiple of 8 between 64 and 4096, got 63"},
		{fHeight, "5000", "Height must be a multiple of 8 between 64 and 4096, got 5000"},
		{fSeed, "-2", "Seed must be -1 (random)"},
		{fPrompt, "   ", "Prompt must not be empty"},
		{fModel, "", "Model must name a model"},
	}
	for _, c := range cases {
		t.Run(c.field+"="+c.text, func(t *testing.T) {
			s := newTestStudio(t, &fakeGen{}, &memHistory{})
			f := s.form
			f.fields.entries[c.field].SetText(c.text)
			_, verr := f.request()
			require.NotNil(t, verr)
			require.Len(t, verr.Fields, 1, "only the changed field is wrong: %v", verr)
			f.showErrors(verr)
			assert.Contains(t, f.fieldError(c.field), c.want)
		})
	}
}

func TestFormRemembersTheLastJobsSettings(t *testing.T) {
	hist := &memHistory{}
	gen := &fakeGen{run: scriptedJob(t, hist, t.TempDir())}
	s := newTestStudio(t, gen, hist)
	setForm(s, "remember me", 12, 64, 64)
	s.form.model.entry.SetText("/models/mine")
	test.Tap(s.generate)
	s.waitFor(t, 20*time.Second, "the job to end", func() bool { return s.job == nil })

	// A new window of the same app (as after a restart) starts from that job.
	q := &uiQueue{}
	again := newStudio(s.app, test.NewTempWindow(t, nil), gen, hist, q.post)
	assert.Equal(t, "remember me", again.form.prompts.prompt.Text)
	assert.Equal(t, "12", again.form.steps.steps.Text)
	assert.Equal(t, "/models/mine", again.form.model.entry.Text)
	assert.Equal(t, []string{request.TinyModel, "/models/mine"}, again.form.model.recent,
		"the demo model stays one click away")
}
