// Package verify proves that a recorded picture reproduces: it regenerates a
// job from the settings the history stores and compares the pixels.
package verify

import (
	"context"
	"errors"
	"fmt"
	"image"
	"image/draw"
	"image/png"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"atelier/core/failure"
	"atelier/core/infotext"
	"atelier/core/media"
	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/store"
)

// ErrBadInput is wrapped by the errors of a check that cannot start: no such
// job, a job without images, a recorded file gone, or settings that cannot run
// any more (a model file moved away). The message says what to do.
var ErrBadInput = errors.New("cannot check")

// Regenerator runs a request again without recording it (jobs.Runner does).
type Regenerator interface {
	Reproduce(ctx context.Context, req request.Request, dir string, onEvent func(protocol.Message)) (*protocol.Result, error)
}

// JobStore is where the recorded job comes from (store.Store).
type JobStore interface {
	GetJob(ctx context.Context, id int64) (*store.JobRecord, error)
}

// Options tune a check.
type Options struct {
	// TempRoot is where the regenerated images are written, in a folder of
	// their own that the check removes; "" is the system's temporary folder.
	TempRoot string
	// KeepDir, when set, keeps a copy of each regenerated image there
	// (named <job uid>-<i>-reproduced.png), to look at what differs.
	KeepDir string
	// OnEvent gets every worker message of the regeneration (progress).
	OnEvent func(protocol.Message)
}

// Report is the outcome of a check.
type Report struct {
	JobID  int64        `json:"job_id"`
	JobUID string       `json:"job_uid"`
	Images []ImageCheck `json:"images"`
	// Identical is true when every image came out with the same pixels.
	Identical bool `json:"identical"`
	// Recorded and Now are how the job ran then and how it ran now.
	Recorded Run `json:"recorded"`
	Now      Run `json:"now"`
	// Differences lists what differs between the two runs (device, dtype,
	// versions, speed settings, the PNG's parameters); a value the job did not
	// record is "".
	Differences []Difference `json:"differences,omitempty"`
}

// Image returns the check of image id, or nil when the job has no such image.
func (r *Report) Image(id int64) *ImageCheck {
	for i := range r.Images {
		if r.Images[i].ImageID == id {
			return &r.Images[i]
		}
	}
	return nil
}

// ImageCheck compares one recorded image with its regenerated twin.
type ImageCheck struct {
	ImageID   int64  `json:"image_id"`
	Path      string `json:"path"`
	Seed      int64  `json:"seed"`
	Width     int    `json:"width"`
	Height    int    `json:"height"`
	Identical bool   `json:"identical"`
	// SizeDiffers: the regenerated image has another size (NewWidth ×
	// NewHeight), so no pixel is compared.
	SizeDiffers bool `json:"size_differs,omitempty"`
	NewWidth    int  `json:"new_width,omitempty"`
	NewHeight   int  `json:"new_height,omitempty"`
	// MaxDiff is the largest difference of one channel (R, G, B or A) of one
	// pixel, 0-255; DiffPixels counts the pixels where any channel differs.
	MaxDiff    int `json:"max_diff"`
	DiffPixels int `json:"diff_pixels"`
	Pixels     int `json:"pixels"`
	// Kept is the copy of the regenerated image (Options.KeepDir).
	Kept string `json:"kept,omitempty"`
}

// DiffPercent is the share of differing pixels, 0-100.
func (c ImageCheck) DiffPercent() float64 {
	if c.Pixels == 0 {
		return 0
	}
	return 100 * float64(c.DiffPixels) / float64(c.Pixels)
}

// Summary says in one line how the image compares.
func (c ImageCheck) Summary() string {
	switch {
	case c.Identical:
		return "identical"
	case c.SizeDiffers:
		return fmt.Sprintf("differs: the regenerated image is %d × %d, the recorded one %d × %d", c.NewWidth, c.NewHeight, c.Width, c.Height)
	}
	return fmt.Sprintf("differs: %d of %d pixels (%s), by at most %d of 255 in a channel",
		c.DiffPixels, c.Pixels, percent(c.DiffPercent()), c.MaxDiff)
}

func percent(p float64) string {
	if p < 0.01 {
		return "under 0.01%"
	}
	return fmt.Sprintf("%.2f%%", p)
}

// Run is what decides a job's pixels besides its settings.
type Run struct {
	Device   string            `json:"device,omitempty"`
	Dtype    string            `json:"dtype,omitempty"`
	Versions map[string]string `json:"versions,omitempty"`
	Speed    map[string]string `json:"speed,omitempty"`
}

func runOf(m *protocol.Metrics) Run {
	if m == nil {
		return Run{}
	}
	return Run{Device: m.Device, Dtype: m.Dtype, Versions: m.Versions, Speed: m.Speed}
}

// Difference is one thing that is not the same in the two runs.
type Difference struct {
	What     string `json:"what"`
	Recorded string `json:"recorded"` // "" when the job did not record it
	Now      string `json:"now"`
}

func (d Difference) String() string {
	rec := d.Recorded
	if rec == "" {
		rec = "not recorded"
	}
	now := d.Now
	if now == "" {
		now = "none"
	}
	return fmt.Sprintf("%s: %s then, %s now", d.What, rec, now)
}

// Job regenerates job jobID from its stored settings (same seed, model, size,
// batch and every other field) and compares each image with the recorded one.
// The regenerated images are not added to the history. An error wrapping
// ErrBadInput means the check could not start; any other error is the
// regeneration's failure (a *failure.JobError from the worker).
func Job(ctx context.Context, st JobStore, gen Regenerator, jobID int64, opt Options) (*Report, error) {
	j, err := st.GetJob(ctx, jobID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: there is no job %d in the history (`atelier history` lists the jobs)", ErrBadInput, jobID)
	}
	if err != nil {
		return nil, err
	}
	if j.Status != store.StatusDone || len(j.Images) == 0 {
		return nil, fmt.Errorf("%w: job %d is %s and has no images to compare; check a done job", ErrBadInput, jobID, j.Status)
	}
	recorded := make([]*image.NRGBA, len(j.Images))
	for i, im := range j.Images {
		if recorded[i], err = readPNG(im.Path); err != nil {
			return nil, fmt.Errorf("%w: the recorded image %s: %v (it was moved or deleted since; nothing to compare)", ErrBadInput, im.Path, err)
		}
	}

	dir, err := os.MkdirTemp(opt.TempRoot, "atelier-verify-")
	if err != nil {
		return nil, fmt.Errorf("make a folder for the regenerated images: %w", err)
	}
	defer os.RemoveAll(dir)
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, err
	}
	res, err := gen.Reproduce(ctx, j.Request, dir, opt.OnEvent)
	if err != nil {
		if badInput(err) {
			return nil, fmt.Errorf("%w: job %d's settings cannot run now: %v. To check it, put back what the job used "+
				"(its model, LoRA, VAE and image files, at the same paths)", ErrBadInput, jobID, err)
		}
		return nil, err
	}
	if len(res.Images) != len(j.Images) {
		return nil, fmt.Errorf("the regeneration made %d images, the job recorded %d", len(res.Images), len(j.Images))
	}

	rep := &Report{JobID: j.ID, JobUID: j.UID, Identical: true, Recorded: runOf(j.Metrics), Now: runOf(res.Metrics)}
	for i, im := range j.Images {
		c := ImageCheck{ImageID: im.ID, Path: im.Path, Seed: im.Seed, Width: im.Width, Height: im.Height}
		again, err := readPNG(res.Images[i].Path)
		if err != nil {
			return nil, fmt.Errorf("read the regenerated image: %w", err)
		}
		compare(&c, recorded[i], again)
		if opt.KeepDir != "" {
			if c.Kept, err = keep(res.Images[i].Path, opt.KeepDir, fmt.Sprintf("%s-%d-reproduced.png", j.UID, i)); err != nil {
				return nil, err
			}
		}
		rep.Identical = rep.Identical && c.Identical
		rep.Images = append(rep.Images, c)
	}
	rep.Differences = differences(rep.Recorded, rep.Now)
	rep.Differences = append(rep.Differences, parameterDifferences(j.Images[0].Path, res.Images[0].Path)...)
	return rep, nil
}

// badInput tells the errors of settings that cannot run (a model moved
// away, a value out of today's limits) from a failing worker.
func badInput(err error) bool {
	if _, ok := request.AsValidation(err); ok {
		return true
	}
	var jerr *failure.JobError
	if !errors.As(err, &jerr) {
		return false
	}
	switch jerr.Code {
	case failure.ErrInvalidRequest, failure.ErrModelNotFound, failure.ErrUnsupported:
		return true
	}
	return false
}

// compare fills c with how b differs from a.
func compare(c *ImageCheck, a, b *image.NRGBA) {
	ab, bb := a.Bounds(), b.Bounds()
	c.Pixels = ab.Dx() * ab.Dy()
	if ab.Size() != bb.Size() {
		c.SizeDiffers, c.NewWidth, c.NewHeight = true, bb.Dx(), bb.Dy()
		return
	}
	for y := 0; y < ab.Dy(); y++ {
		ra := a.Pix[y*a.Stride : y*a.Stride+4*ab.Dx()]
		rb := b.Pix[y*b.Stride : y*b.Stride+4*ab.Dx()]
		for x := 0; x < len(ra); x += 4 {
			worst := 0
			for k := 0; k < 4; k++ {
				d := int(ra[x+k]) - int(rb[x+k])
				if d < 0 {
					d = -d
				}
				worst = max(worst, d)
			}
			if worst > 0 {
				c.DiffPixels++
				c.MaxDiff = max(c.MaxDiff, worst)
			}
		}
	}
	c.Identical = c.DiffPixels == 0
}

// readPNG decodes a PNG into 8-bit RGBA, the form both sides are compared in.
func readPNG(path string) (*image.NRGBA, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		return nil, fmt.Errorf("not a readable PNG: %w", err)
	}
	if n, ok := img.(*image.NRGBA); ok {
		return n, nil
	}
	n := image.NewNRGBA(image.Rect(0, 0, img.Bounds().Dx(), img.Bounds().Dy()))
	draw.Draw(n, n.Bounds(), img, img.Bounds().Min, draw.Src)
	return n, nil
}

func keep(src, dir, name string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("keep the regenerated image: %w", err)
	}
	dst, err := filepath.Abs(filepath.Join(dir, name))
	if err != nil {
		return "", err
	}
	if err := media.CopyFileAtomic(src, dst); err != nil {
		return "", fmt.Errorf("keep the regenerated image: %w", err)
	}
	return dst, nil
}

// differences lists what differs between two runs. What a run did not record
// counts only when the other has it.
func differences(then, now Run) []Difference {
	var out []Difference
	add := func(what, a, b string) {
		if a != b {
			out = append(out, Difference{What: what, Recorded: a, Now: b})
		}
	}
	add("device", then.Device, now.Device)
	add("dtype", then.Dtype, now.Dtype)
	for _, k := range keys(then.Versions, now.Versions) {
		add(k+" version", then.Versions[k], now.Versions[k])
	}
	if then.Speed == nil && now.Speed != nil {
		// One line, not one for each setting.
		return append(out, Difference{What: "speed settings", Now: joinMap(now.Speed)})
	}
	for _, k := range keys(then.Speed, now.Speed) {
		add("speed setting "+k, then.Speed[k], now.Speed[k])
	}
	return out
}

// parameterDifferences compares the A1111 parameters the two PNGs carry:
// a model file changed since (Model hash) or another Atelier (Version).
func parameterDifferences(recordedPath, nowPath string) []Difference {
	then, now := pngParameters(recordedPath), pngParameters(nowPath)
	if then == nil && now != nil {
		return []Difference{{What: "PNG parameters text", Recorded: "none", Now: "present"}}
	}
	var out []Difference
	for _, k := range keys(then, now) {
		if then[k] != now[k] {
			out = append(out, Difference{What: k, Recorded: then[k], Now: now[k]})
		}
	}
	return out
}

func pngParameters(path string) map[string]string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	text, err := media.ReadPNGText(f)
	if err != nil || strings.TrimSpace(text["parameters"]) == "" {
		return nil
	}
	out := map[string]string{}
	for _, p := range infotext.ParseInfotext(text["parameters"]).Params {
		out[p.Key] = p.Value
	}
	return out
}

func keys(a, b map[string]string) []string {
	seen := map[string]bool{}
	for k := range a {
		seen[k] = true
	}
	for k := range b {
		seen[k] = true
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func joinMap(m map[string]string) string {
	var parts []string
	for _, k := range keys(m, nil) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, " ")
}
