package ui

import (
	"context"
	"fmt"
	"image"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/canvas"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/layout"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"atelier/core/request"
	"atelier/core/store"
)

// viewer is the large image with its caption and actions.
type viewer struct {
	s           *Studio
	img         *canvas.Image
	zoom        *zoomView
	placeholder fyne.CanvasObject
	title       *widget.Label
	info        *widget.Label
	reuseSeed   *widget.Button
	reuseAll    *widget.Button
	toInit      *widget.Button
	upscale     *widget.Button
	open        *widget.Button
	shown       *store.ImageRecord
}

func newViewer(s *Studio) *viewer {
	v := &viewer{s: s, img: &canvas.Image{FillMode: canvas.ImageFillContain, ScaleMode: canvas.ImageScaleSmooth}}
	v.img.Hide()
	v.zoom = newZoomView(v.img)
	icon := widget.NewIcon(theme.MediaPhotoIcon())
	hint := widget.NewLabelWithStyle("Write a prompt and press Generate (Ctrl+Enter).",
		fyne.TextAlignCenter, fyne.TextStyle{})
	hint.Importance = widget.LowImportance
	v.placeholder = container.NewCenter(container.NewVBox(
		container.NewCenter(container.NewGridWrap(fyne.NewSquareSize(64), icon)), hint))
	v.title = widget.NewLabelWithStyle("", fyne.TextAlignLeading, fyne.TextStyle{Bold: true})
	v.title.Truncation = fyne.TextTruncateEllipsis
	v.info = widget.NewLabel("")
	// The info is what the result is (seed, size, model, time): it wraps
	// rather than lose its end beside the actions.
	v.info.Wrapping = fyne.TextWrapWord
	v.reuseSeed = widget.NewButtonWithIcon("Reuse seed", theme.ContentCopyIcon(), v.useSeed)
	v.reuseAll = widget.NewButtonWithIcon("Use settings", theme.ContentRedoIcon(), v.useSettings)
	v.toInit = widget.NewButtonWithIcon("img2img", theme.MediaReplayIcon(), v.useAsInit)
	v.upscale = widget.NewButtonWithIcon("Upscale", theme.ZoomInIcon(), v.upscaleShown)
	v.open = widget.NewButtonWithIcon("Open", theme.FileImageIcon(), v.openFile)
	for _, b := range v.actions() {
		b.Importance = widget.LowImportance
		b.Disable()
	}
	return v
}

func (v *viewer) content() fyne.CanvasObject {
	bg := canvas.NewRectangle(canvasBg)
	bg.CornerRadius = 10
	stage := container.NewStack(bg, v.placeholder, container.NewPadded(v.zoom.stage),
		container.NewVBox(container.NewHBox(layout.NewSpacer(), v.zoom.bar)))
	// The title and the info take the whole width, the actions a row of
	// their own: beside them, at 1024 px, the info wrapped a word to a line.
	caption := container.NewVBox(v.title, v.info,
		container.NewHBox(layout.NewSpacer(), v.reuseSeed, v.reuseAll, v.toInit, v.upscale, v.open))
	return container.NewPadded(container.NewBorder(nil, caption, nil, nil, stage))
}

// showPreview shows a live preview of the running job.
func (v *viewer) showPreview(img image.Image, p progressSnapshot) {
	v.img.File, v.img.Image = "", img
	v.zoom.setPixels(img.Bounds().Dx(), img.Bounds().Dy())
	v.img.Show()
	v.placeholder.Hide()
	v.img.Refresh()
	v.title.SetText("Preview")
	v.info.SetText(progressText(p, time.Since(v.s.job.start)))
	// The actions belong to a finished image, not to latents in progress.
	for _, b := range v.actions() {
		b.Disable()
	}
}

// showRecord shows a finished image; extra is appended to its caption.
func (v *viewer) showRecord(rec store.ImageRecord, extra string) {
	r := rec
	v.shown = &r
	v.img.Image, v.img.File = nil, rec.Path
	v.zoom.setPixels(rec.Width, rec.Height)
	v.img.Show()
	v.placeholder.Hide()
	v.img.Refresh()
	title := strings.Join(strings.Fields(rec.Prompt), " ")
	if title == "" {
		title = filepath.Base(rec.Path)
	}
	v.title.SetText(title)
	parts := []string{fmt.Sprintf("seed %d", rec.Seed), fmt.Sprintf("%d × %d", rec.Width, rec.Height)}
	if rec.Model != "" {
		parts = append(parts, modelLabel(rec.Model))
	}
	if extra != "" {
		parts = append(parts, extra)
	}
	v.info.SetText(strings.Join(parts, " · "))
	for _, b := range v.actions() {
		b.Enable()
	}
}

func (v *viewer) actions() []*widget.Button {
	return []*widget.Button{v.reuseSeed, v.reuseAll, v.toInit, v.upscale, v.open}
}

// imageDetails is a history that also knows an image's whole request
// (store.Store); the strip's History alone knows only its prompt and seed.
type imageDetails interface {
	GetImage(ctx context.Context, id int64) (*store.ImageDetail, error)
}

// upscaleShown enlarges the shown image, with the settings the history has of it.
func (v *viewer) upscaleShown() {
	if v.shown == nil {
		return
	}
	src := request.DefaultRequest()
	src.Prompt, src.Model, src.Seed = v.shown.Prompt, v.shown.Model, v.shown.Seed
	if h, ok := v.s.hist.(imageDetails); ok && v.shown.ID != 0 {
		if d, err := h.GetImage(context.Background(), v.shown.ID); err == nil {
			src = d.Request
		}
	}
	v.s.upscaleImage(v.shown.Path, src)
}

// useAsInit starts an img2img job from the shown image.
func (v *viewer) useAsInit() {
	if v.shown != nil {
		v.s.useAsInit(v.shown.Path, v.shown.Width, v.shown.Height)
	}
}

func (v *viewer) useSeed() {
	if v.shown != nil {
		v.s.form.seed.seed.SetText(fmt.Sprint(v.shown.Seed))
	}
}

// useSettings loads what the history knows of the shown image back into the form.
func (v *viewer) useSettings() {
	if v.shown == nil {
		return
	}
	f, r := v.s.form, v.shown
	f.prompts.prompt.SetText(r.Prompt)
	if r.Model != "" {
		f.model.entry.SetText(r.Model)
	}
	f.seed.seed.SetText(fmt.Sprint(r.Seed))
	if r.Width > 0 && r.Height > 0 {
		f.size.width.SetText(fmt.Sprint(r.Width))
		f.size.height.SetText(fmt.Sprint(r.Height))
	}
}

func (v *viewer) openFile() {
	if v.shown == nil {
		return
	}
	if err := v.s.app.OpenURL(&url.URL{Scheme: "file", Path: v.shown.Path}); err != nil {
		v.s.status.set(statusError, "Could not open the image: "+err.Error(), "")
	}
}

// modelLabel is how the views name a model: the demo model by what it is,
// any other by the name its images' parameters give it.
func modelLabel(m string) string {
	if m == request.TinyModel {
		return "tiny demo model"
	}
	return request.ModelName(m)
}
