package core

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
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
var samplerNames = map[string]string{
	"Euler": "euler", "Euler a": "euler_a", "DDIM": "ddim", "DPM++ 2M": "dpmpp_2m",
}

// ApplyTo copies the settings the infotext carries into req, leaving the rest
// as they are. It returns a note for each value it could not use, so the user
// learns what did not come back.
func (it Infotext) ApplyTo(req *Request) []string {
	var notes []string
	req.Prompt = it.Prompt
	req.NegativePrompt = it.NegativePrompt
	atoi := func(key string, dst *int) {
		if v, ok := it.Get(key); ok {
			if n, err := strconv.Atoi(v); err == nil {
				*dst = n
			} else {
				notes = append(notes, fmt.Sprintf("%s %q is not a whole number", key, v))
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
			notes = append(notes, fmt.Sprintf("Seed %q is not a whole number", v))
		}
	}
	if v, ok := it.Get("Size"); ok {
		var w, h int
		if _, err := fmt.Sscanf(v, "%dx%d", &w, &h); err == nil {
			req.Width, req.Height = w, h
		} else {
			notes = append(notes, fmt.Sprintf("Size %q is not WIDTHxHEIGHT", v))
		}
	}
	if v, ok := it.Get("Sampler"); ok {
		if s, known := samplerNames[v]; known {
			req.Scheduler = s
		} else {
			notes = append(notes, fmt.Sprintf("sampler %q is not available; keeping %s", v, req.Scheduler))
		}
	}
	return notes
}
