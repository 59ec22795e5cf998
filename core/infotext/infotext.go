// Package infotext reads and writes AUTOMATIC1111's generation parameters
// ("infotext") and imports them from a PNG onto a request.
package infotext

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"unicode"

	"atelier/core/library"
	"atelier/core/request"
)

// Infotext is AUTOMATIC1111's "parameters" text: the prompt, an optional
// "Negative prompt:" line, then one line of `Key: value` pairs. Other tools
// write it too, so reading it is how a PNG's settings come back into the form.
type Infotext struct {
	Prompt         string
	NegativePrompt string
	Params         []Param // in the order written
}

// Param is one `Key: value` pair of an infotext.
type Param struct{ Key, Value string }

// reParam matches one pair the way A1111 does: a key of word characters,
// spaces, dashes and slashes, then a JSON-quoted or a comma-free value.
var reParam = regexp.MustCompile(`\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)`)

const negPrefix = "Negative prompt:"

// ParseInfotext reads infotext. Like A1111, the last line counts as the
// parameter line only if it holds at least three pairs; otherwise it is prompt.
func ParseInfotext(text string) Infotext {
	var it Infotext
	lines := strings.Split(strings.TrimSpace(strings.ReplaceAll(text, "\r\n", "\n")), "\n")
	last := lines[len(lines)-1]
	if m := reParam.FindAllStringSubmatch(last, -1); len(m) >= 3 {
		lines = lines[:len(lines)-1]
		for _, kv := range m {
			v := strings.TrimSpace(kv[2])
			if strings.HasPrefix(v, `"`) && strings.HasSuffix(v, `"`) {
				var s string
				if json.Unmarshal([]byte(v), &s) == nil {
					v = s
				}
			}
			it.Params = append(it.Params, Param{Key: strings.TrimSpace(kv[1]), Value: v})
		}
	}
	var prompt, neg []string
	inNeg := false
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, negPrefix) {
			inNeg = true
			l = strings.TrimSpace(l[len(negPrefix):])
		}
		if inNeg {
			neg = append(neg, l)
		} else {
			prompt = append(prompt, l)
		}
	}
	it.Prompt = strings.Join(prompt, "\n")
	it.NegativePrompt = strings.Join(neg, "\n")
	return it
}

// Get returns the value of key, if present.
func (it Infotext) Get(key string) (string, bool) {
	for _, p := range it.Params {
		if p.Key == key {
			return p.Value, true
		}
	}
	return "", false
}

// String writes infotext in A1111's format, quoting values as A1111 does.
func (it Infotext) String() string {
	var b strings.Builder
	b.WriteString(it.Prompt)
	if it.NegativePrompt != "" {
		b.WriteString("\n" + negPrefix + " " + it.NegativePrompt)
	}
	if len(it.Params) > 0 {
		parts := make([]string, len(it.Params))
		for i, p := range it.Params {
			parts[i] = p.Key + ": " + quoteInfotext(p.Value)
		}
		b.WriteString("\n" + strings.Join(parts, ", "))
	}
	return b.String()
}

func quoteInfotext(v string) string {
	if !strings.ContainsAny(v, ",\n:") {
		return v
	}
	q, _ := json.Marshal(v)
	return string(q)
}

// samplerNames maps A1111 sampler names to the worker's scheduler names.
var samplerNames = func() map[string]string {
	m := map[string]string{}
	for id, name := range request.SamplerNames {
		m[name] = id
	}
	return m
}()

// scheduleTypes maps A1111 "Schedule type" values to schedules.
var scheduleTypes = map[string]string{"Automatic": "", "Karras": "karras", "Exponential": "exponential", "Beta": "beta"}

// reLoraTag is A1111's LoRA tag in a prompt or in the "Loras" value: <lora:name:weight>.
var reLoraTag = regexp.MustCompile(`<lora:([^:>]+)(?::(-?[0-9.]+))?[^>]*>`)

var reSpacedLoraTag = regexp.MustCompile(`[ \t]*` + reLoraTag.String())

// ApplyTo copies the settings the infotext carries into req, leaving the rest
// as they are. Each value the form's validation refuses is put back as it was,
// so that an import never brings in what the form would not accept. It returns
// a note for each value it could not use, so the user learns what did not
// come back.
func (it Infotext) ApplyTo(req *request.Request) []string {
	return it.ApplyWith(req, nil)
}

// ApplyWith is ApplyTo that also finds the LoRAs the infotext names in lib,
// by name (lib may be nil: then only the tiny demo LoRA is found).
func (it Infotext) ApplyWith(req *request.Request, lib *library.Library) []string {
	before := *req // ApplyTo replaces slices and pointers, never writes through them
	notes := it.apply(req, lib)
	return append(notes, keepValid(req, before)...)
}

func (it Infotext) apply(req *request.Request, lib *library.Library) []string {
	var notes []string
	for _, f := range []struct {
		name string
		src  string
		dst  *string
	}{{"prompt", it.Prompt, &req.Prompt}, {"negative prompt", it.NegativePrompt, &req.NegativePrompt}} {
		var n int
		if *f.dst, n = withoutControls(f.src); n > 0 {
			notes = append(notes, fmt.Sprintf("%s: %d control character(s) removed (a prompt keeps only newlines and tabs)", f.name, n))
		}
	}
	atoi := func(key string, dst *int) {
		if v, ok := it.Get(key); ok {
			if n, err := strconv.Atoi(v); err == nil {
				*dst = n
			} else {
				notes = append(notes, intNote(key, v, err))
			}
		}
	}
	atoi("Steps", &req.Steps)
	if v, ok := it.Get("CFG scale"); ok {
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			req.CFG = f
		} else {
			notes = append(notes, fmt.Sprintf("CFG scale %q is not a number", v))
		}
	}
	if v, ok := it.Get("Seed"); ok {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			req.Seed = n
		} else {
			notes = append(notes, intNote("Seed", v, err)+"; keeping "+shown("seed", reflect.ValueOf(req.Seed)))
		}
	}
	if v, ok := it.Get("Size"); ok {
		if w, h, ok := parseSize(v); ok {
			req.Width, req.Height = w, h
		} else {
			notes = append(notes, fmt.Sprintf("Size %q is not WIDTHxHEIGHT", v))
		}
	}
	if v, ok := it.Get("Sampler"); ok {
		// Older A1111 versions fold the schedule into the name: "DPM++ 2M Karras".
		sched, folded := "", false
		for name, id := range scheduleTypes {
			if id != "" && strings.HasSuffix(v, " "+name) {
				if _, known := samplerNames[strings.TrimSuffix(v, " "+name)]; known {
					v, sched, folded = strings.TrimSuffix(v, " "+name), id, true
				}
			}
		}
		if s, known := samplerNames[v]; known {
			req.Scheduler = s
			if folded {
				req.Schedule = sched
			}
		} else {
			notes = append(notes, fmt.Sprintf("sampler %q is not available; keeping %s", v, req.Scheduler))
		}
	}
	if v, ok := it.Get("Schedule type"); ok {
		if sc, known := scheduleTypes[v]; known {
			req.Schedule = sc
		} else {
			notes = append(notes, fmt.Sprintf("schedule type %q is not available; keeping the sampler's own", v))
		}
	}
	float := func(key string, dst *float64) bool {
		v, ok := it.Get(key)
		if !ok {
			return false
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			notes = append(notes, fmt.Sprintf("%s %q is not a number", key, v))
			return false
		}
		*dst = f
		return true
	}
	_, byScale := it.Get("Hires upscale")
	resize, byResize := it.Get("Hires resize")
	if byScale || byResize {
		// A1111 writes the hires pass's strength as "Denoising strength" too.
		if byScale {
			float("Hires upscale", &req.HiresScale)
		} else if w, h, ok := parseSize(resize); ok && req.Width > 0 && req.Height > 0 {
			// "Resize to" a size: the factor of the wider side (Atelier keeps the aspect).
			req.HiresScale = math.Round(max(float64(w)/float64(req.Width), float64(h)/float64(req.Height))*100) / 100
		} else {
			notes = append(notes, fmt.Sprintf("Hires resize %q is not WIDTHxHEIGHT", resize))
		}
		float("Denoising strength", &req.HiresStrength)
		atoi("Hires steps", &req.HiresSteps)
		if v, ok := it.Get("Hires upscaler"); ok && !strings.EqualFold(v, "Lanczos") {
			notes = append(notes, fmt.Sprintf("Hires upscaler %q: Atelier's hires pass enlarges with Lanczos", v))
		}
	} else {
		float("Denoising strength", &req.Strength)
	}
	if v, ok := it.Get("Mask blur"); ok {
		if n, err := strconv.Atoi(v); err == nil {
			req.MaskBlur = request.IntPtr(n)
		} else {
			notes = append(notes, intNote("Mask blur", v, err))
		}
	}
	atoi("Masked area padding", &req.MaskPadding)
	notes = append(notes, it.applyParts(req, lib, float)...)
	return notes
}

// applyParts maps the LoRAs, VAE, refiner, ControlNets and upscaler. The
// tiny demo parts and Lanczos are named back to themselves and LoRAs to the
// library's of that name; a file name alone does not say where the others
// are, so they become notes.
func (it Infotext) applyParts(req *request.Request, lib *library.Library, float func(string, *float64) bool) []string {
	var notes []string
	// The path a LoRA's name stands for, or "" when none is here.
	loraPath := func(name string) string {
		if name == request.TinyLoRA {
			return request.TinyLoRA
		}
		if e, ok := lib.Named(library.KindLoRA, name); ok {
			return e.Path
		}
		return ""
	}
	// LoRAs: Atelier writes "Loras" (and the tags in the prompt, as A1111
	// does); A1111 keeps the tags in the prompt only.
	tags, _ := it.Get("Loras")
	var loras []request.LoRA
	found := map[string]bool{} // the names whose tags leave the prompt
	for _, src := range []string{tags, req.Prompt} {
		for _, m := range reLoraTag.FindAllStringSubmatch(src, -1) {
			w := 1.0
			if m[2] != "" {
				if f, err := strconv.ParseFloat(m[2], 64); err == nil {
					w = f
				}
			}
			name := strings.TrimSpace(m[1])
			if p := loraPath(name); p != "" {
				found[name] = true
				if !hasLoRA(loras, p) {
					loras = append(loras, request.LoRA{Path: p, Weight: w})
				}
			} else {
				notes = append(notes, fmt.Sprintf("LoRA %q (weight %g) is not in the model library: choose its file in the LoRA section", name, w))
			}
		}
		if len(loras) > 0 || tags != "" {
			break // the "Loras" value, when present, is the whole list
		}
	}
	if loras != nil {
		req.LoRAs = loras
		// A tag leaves with the spaces before it: "dusk <lora:x:1>, sea" becomes "dusk, sea".
		req.Prompt = strings.TrimSpace(reSpacedLoraTag.ReplaceAllStringFunc(req.Prompt, func(tag string) string {
			if m := reLoraTag.FindStringSubmatch(tag); m != nil && found[strings.TrimSpace(m[1])] {
				return ""
			}
			return tag
		}))
	}
	part := func(key, tiny, section string, dst *string) bool {
		v, ok := it.Get(key)
		if !ok {
			return false
		}
		if v == tiny {
			*dst = tiny
			return true
		}
		notes = append(notes, fmt.Sprintf("%s %q: choose its file in the %s section", key, v, section))
		return false
	}
	part("VAE", request.TinyVAE, "VAE", &req.VAE)
	if part("Refiner", request.TinyRefiner, "Refiner", &req.Refiner) {
		float("Refiner switch at", &req.RefinerSwitch)
	}
	if v, ok := it.Get("Postprocess upscaler"); ok {
		if strings.EqualFold(v, "Lanczos") {
			req.Upscaler = request.LanczosUpscaler
			float("Postprocess upscale by", &req.Upscale)
		} else {
			notes = append(notes, fmt.Sprintf("Postprocess upscaler %q: choose its file in the Upscale section", v))
		}
	}
	for i := 0; ; i++ {
		v, ok := it.Get(fmt.Sprintf("ControlNet %d", i))
		if !ok {
			break
		}
		unit := ParseInfotext("x\n" + v)
		module, _ := unit.Get("Module")
		model, _ := unit.Get("Model")
		notes = append(notes, fmt.Sprintf("ControlNet %d (%s, %s) needs its control image: add it in the ControlNet section", i, module, model))
	}
	return notes
}

func hasLoRA(list []request.LoRA, path string) bool {
	for _, l := range list {
		if l.Path == path {
			return true
		}
	}
	return false
}

// intNote says why v is not a usable whole number.
func intNote(key, v string, err error) string {
	if errors.Is(err, strconv.ErrRange) {
		return fmt.Sprintf("%s %s is out of range", key, v)
	}
	return fmt.Sprintf("%s %q is not a whole number", key, v)
}

// withoutControls drops the control characters a prompt may not hold (all but
// newline and tab), as request validation refuses them, and counts them.
func withoutControls(s string) (string, int) {
	n := 0
	out := strings.Map(func(c rune) rune {
		if unicode.IsControl(c) && c != '\n' && c != '\t' {
			n++
			return -1
		}
		return c
	}, s)
	return out, n
}

// keepValid validates req as the form does and puts back, from before, each
// field whose new value it refuses, with a note. A refused field that the
// import did not change is not the import's doing and is left alone, and so
// are the prompts (they are the picture's, whatever they hold).
func keepValid(req *request.Request, before request.Request) []string {
	var notes []string
	for range 3 { // a value put back can settle a rule between fields; three rounds are more than any needs
		v, ok := request.AsValidation(req.Validate())
		if !ok {
			break
		}
		changed := false
		for _, fe := range v.Fields {
			name := fe.Field
			if i := strings.IndexAny(name, "[."); i >= 0 {
				name = name[:i] // loras[1].weight: the list goes back whole
			}
			if name == "prompt" || name == "negative_prompt" {
				continue
			}
			cur, old := requestField(req, name), requestField(&before, name)
			if !cur.IsValid() || reflect.DeepEqual(cur.Interface(), old.Interface()) {
				continue
			}
			cur.Set(old)
			changed = true
			notes = append(notes, fmt.Sprintf("%s %s; keeping %s", fe.Field, fe.Message, shown(name, old)))
		}
		if !changed {
			break
		}
	}
	return notes
}

// requestField is the field of r whose JSON name is name, or the zero Value.
func requestField(r *request.Request, name string) reflect.Value {
	v := reflect.ValueOf(r).Elem()
	for i := range v.NumField() {
		if tag, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("json"), ","); tag == name {
			return v.Field(i)
		}
	}
	return reflect.Value{}
}

// shown is a kept value as a note says it.
func shown(name string, v reflect.Value) string {
	switch {
	case name == "seed" && v.Int() == -1:
		return "a random seed"
	case v.Kind() == reflect.Pointer:
		if v.IsNil() {
			return "the default"
		}
		return fmt.Sprint(v.Elem().Interface())
	case v.Kind() == reflect.Slice:
		if v.Len() == 0 {
			return "none"
		}
		return "the ones before"
	case v.Kind() == reflect.String:
		if v.String() == "" {
			return "none"
		}
		return strconv.Quote(v.String())
	}
	return fmt.Sprint(v.Interface())
}

// parseSize reads A1111's "WIDTHxHEIGHT".
func parseSize(v string) (int, int, bool) {
	var w, h int
	if _, err := fmt.Sscanf(v, "%dx%d", &w, &h); err != nil || w <= 0 || h <= 0 {
		return 0, 0, false
	}
	return w, h, true
}
