package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"unicode/utf8"

	"atelier/core/failure"
	"atelier/core/request"
	"atelier/core/spec"
)

// MaxLineBytes caps one protocol line, not counting its newline (docs/protocol.md).
const MaxLineBytes = spec.MaxLineBytes

// MaxIDLen is the longest request id the protocol allows.
const MaxIDLen = spec.MaxIDLen

// Stages are the values of a progress message's stage, in the order a job meets them.
var Stages = spec.Stages

// DeviceKinds are the values of hello's device.
var DeviceKinds = spec.DeviceKinds

// ErrMalformed marks every line that Decode rejects and every message that
// Encode refuses to write. Test with errors.Is.
var ErrMalformed = errors.New("malformed protocol message")

// ProtocolError says why a line or message breaks docs/protocol.md. Field names the
// offending field as the worker's error.field does: a request field by its bare name
// ("steps"), anything else by its path in the message ("id", "images[0].seed"); it is
// empty when the line is not a JSON object at all. It matches ErrMalformed with
// errors.Is, and a generate request's *ValidationError with AsValidation.
type ProtocolError struct {
	Type   string // the message type, when the line got that far
	Field  string
	Reason string
	Err    error // the request's *ValidationError, when that is the cause
}

func (e *ProtocolError) Error() string {
	s := ErrMalformed.Error()
	if e.Type != "" {
		s += ": " + strconv.Quote(e.Type)
	}
	if e.Field != "" {
		s += ": field " + strconv.Quote(e.Field)
	}
	return s + ": " + e.Reason
}

func (e *ProtocolError) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrMalformed, e.Err}
	}
	return []error{ErrMalformed}
}

func perr(typ, field, format string, args ...any) *ProtocolError {
	return &ProtocolError{Type: typ, Field: field, Reason: fmt.Sprintf(format, args...)}
}

// ValidID reports whether id is a protocol request id: 1–64 characters of [A-Za-z0-9_.-].
func ValidID(id string) bool {
	if len(id) == 0 || len(id) > MaxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '.', c == '-':
		default:
			return false
		}
	}
	return true
}

// Decode parses one protocol line strictly: a single UTF-8 JSON object of at most
// MaxLineBytes (one trailing newline allowed), a known type, every field its type
// requires with the right JSON type and in range. Field names match exactly (unlike
// encoding/json's case-insensitive matching); unknown fields are ignored so that a newer
// peer can add some. The message is a value of its own type (Progress, Result …).
// Every error wraps ErrMalformed, and a generate request's field errors are also
// reachable with request.AsValidation.
func Decode(line []byte) (Message, error) {
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) > MaxLineBytes {
		return nil, perr("", "", "line of %d bytes is longer than the %d-byte limit", len(line), MaxLineBytes)
	}
	if !utf8.Valid(line) {
		return nil, perr("", "", "line is not valid UTF-8")
	}
	// A raw newline inside would mean two lines were glued together by the caller.
	if bytes.ContainsAny(line, "\r\n") {
		return nil, perr("", "", "line contains a line break")
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(line, &top); err != nil {
		return nil, perr("", "", "not a JSON object: %v", err)
	}
	if top == nil {
		return nil, perr("", "", "not a JSON object: null")
	}
	f := &fields{m: top, st: &decodeState{}}
	typ := f.str("type", true)
	if f.st.err != nil {
		return nil, f.st.err
	}
	f.st.typ = typ
	var m Message
	switch typ {
	case MsgGenerate:
		g := Generate{ID: f.str("id", true)}
		if rf := f.object("request", true); rf != nil {
			rf.path = "" // request fields go by their bare names, as in the worker's error.field
			g.Request = decodeRequest(rf)
		}
		m = g
	case MsgCancel:
		m = Cancel{ID: f.str("id", true)}
	case MsgPing:
		m = Ping{ID: f.str("id", true)}
	case MsgAccepted:
		m = Accepted{ID: f.str("id", true)}
	case MsgPong:
		m = Pong{ID: f.str("id", true)}
	case MsgHeartbeat:
		m = Heartbeat{ID: f.str("id", true)}
	case MsgUnload:
		m = Unload{}
	case MsgShutdown:
		m = Shutdown{}
	case MsgLoading:
		m = Loading{Message: f.str("message", true)}
	case MsgHello:
		h := Hello{
			Protocol:      f.int("protocol", true),
			WorkerVersion: f.str("worker_version", true),
			Device:        f.str("device", true),
			Dtype:         f.str("dtype", true),
		}
		if items, ok := f.array("devices", true); ok {
			h.Devices = make([]Device, 0, len(items))
			for _, df := range items {
				h.Devices = append(h.Devices, Device{
					Name:        df.str("name", true),
					Kind:        df.str("kind", true),
					MemoryBytes: df.int64("memory_bytes", false),
				})
			}
		}
		if cf := f.object("capabilities", true); cf != nil {
			h.Capabilities = &Capabilities{
				Schedulers:      cf.strings("schedulers", false),
				ControlNetTypes: cf.strings("controlnet_types", false),
				Features:        cf.strings("features", false),
				Schedules:       cf.stringLists("schedules"),
			}
		}
		h.Versions = f.stringMap("versions", true)
		h.Host = f.str("host", false)
		h.PID = f.int("pid", false)
		m = h
	case MsgProgress:
		m = Progress{
			ID:       f.str("id", true),
			Stage:    f.str("stage", true),
			Step:     f.int("step", true),
			Total:    f.int("total", true),
			ElapsedS: f.float("elapsed_s", true),
			Note:     f.str("note", false),
		}
	case MsgPreview:
		m = Preview{ID: f.str("id", true), Step: f.int("step", true), Path: f.str("path", true)}
	case MsgResult:
		r := Result{ID: f.str("id", true)}
		if items, ok := f.array("images", true); ok {
			r.Images = make([]ImageResult, 0, len(items))
			for _, imf := range items {
				r.Images = append(r.Images, ImageResult{
					Path:   imf.str("path", true),
					Seed:   imf.int64("seed", true),
					Width:  imf.int("width", true),
					Height: imf.int("height", true),
				})
			}
		}
		if mf := f.object("metrics", true); mf != nil {
			// Measurements a worker cannot take (peak memory on some devices) may be
			// missing; they read as zero.
			r.Metrics = &Metrics{
				TotalS:       mf.float("total_s", false),
				LoadS:        mf.float("load_s", false),
				DenoiseS:     mf.float("denoise_s", false),
				ItS:          mf.float("its", false),
				Device:       mf.str("device", false),
				Dtype:        mf.str("dtype", false),
				PeakMemBytes: mf.int64("peak_mem_bytes", false),
				VAEFallback:  mf.boolean("vae_fallback"),
				BatchChunks:  mf.int("batch_chunks", false),
				Versions:     mf.stringMap("versions", false),
				Speed:        mf.stringMap("speed", false),
			}
		}
		// Empty reads as absent: the encoder leaves an empty list out.
		if ci := f.strings("control_images", false); len(ci) > 0 {
			r.ControlImages = ci
		}
		m = r
	case MsgError:
		m = Error{
			// An error about a line the worker could not read has no id.
			ID:      f.str("id", false),
			Code:    failure.ErrorCode(f.str("code", true)),
			Message: f.str("message", true),
			Detail:  f.str("detail", false),
			Field:   f.str("field", false),
		}
	default:
		return nil, perr(typ, "type", "unknown message type")
	}
	if f.st.err != nil {
		return nil, f.st.err
	}
	if err := check(m); err != nil {
		return nil, err
	}
	return m, nil
}

func decodeRequest(f *fields) *request.Request {
	r := &request.Request{
		Prompt:         f.str("prompt", true),
		NegativePrompt: f.str("negative_prompt", false),
		Model:          f.str("model", true),
		Scheduler:      f.str("scheduler", false),
		Steps:          f.int("steps", true),
		CFG:            f.float("cfg", true),
		Width:          f.int("width", true),
		Height:         f.int("height", true),
		Seed:           f.int64("seed", true),
		BatchSize:      f.int("batch_size", false),
		OutputDir:      f.str("output_dir", true),
		PreviewEvery:   f.int("preview_every", false),
		Schedule:       f.str("schedule", false),
		Refiner:        f.str("refiner", false),
		RefinerSwitch:  f.float("refiner_switch", false),
		VAE:            f.str("vae", false),
		InitImage:      f.str("init_image", false),
		Strength:       f.float("strength", false),
		MaskImage:      f.str("mask_image", false),
		MaskPadding:    f.int("mask_padding", false),
		Upscaler:       f.str("upscaler", false),
		Upscale:        f.float("upscale", false),
		HiresScale:     f.float("hires_scale", false),
		HiresSteps:     f.int("hires_steps", false),
		HiresStrength:  f.float("hires_strength", false),
		UpscaleOnly:    f.boolean("upscale_only"),
	}
	if f.raw("mask_blur", false) != nil {
		r.MaskBlur = request.IntPtr(f.int("mask_blur", false))
	}
	if items, ok := f.array("loras", false); ok {
		for _, lf := range items {
			l := request.LoRA{Path: lf.str("path", true), Weight: spec.DefaultLoRAWeight}
			if lf.raw("weight", false) != nil {
				l.Weight = lf.float("weight", false)
			}
			r.LoRAs = append(r.LoRAs, l)
		}
	}
	if items, ok := f.array("controlnets", false); ok {
		for _, cf := range items {
			c := request.DefaultControlNet()
			c.Type = cf.str("type", true)
			c.Model = cf.str("model", true)
			c.Image = cf.str("image", true)
			if cf.raw("scale", false) != nil {
				c.Scale = cf.float("scale", false)
			}
			if cf.raw("start", false) != nil {
				c.Start = cf.float("start", false)
			}
			if cf.raw("end", false) != nil {
				c.End = cf.float("end", false)
			}
			if cf.raw("canny_low", false) != nil {
				c.CannyLow = cf.int("canny_low", false)
			}
			if cf.raw("canny_high", false) != nil {
				c.CannyHigh = cf.int("canny_high", false)
			}
			r.ControlNets = append(r.ControlNets, c)
		}
	}
	return r
}

// check holds the rules about values, shared by decoding and encoding, so that
// the bridge can never send a line that the worker would have to reject.
func check(m Message) error {
	typ := m.Type()
	bad := func(field, format string, args ...any) error {
		return perr(typ, field, format, args...)
	}
	needID := func(id string) error {
		if !ValidID(id) {
			return bad("id", "must be 1-%d characters of A-Z a-z 0-9 _ . -, got %q", MaxIDLen, id)
		}
		return nil
	}
	switch m := m.(type) {
	case Generate:
		if err := needID(m.ID); err != nil {
			return err
		}
		if m.Request == nil {
			return bad("request", "is required")
		}
		if err := m.Request.ValidateWire(); err != nil {
			pe := &ProtocolError{Type: typ, Reason: err.Error(), Err: err}
			if v, ok := request.AsValidation(err); ok && len(v.Fields) > 0 {
				pe.Field = v.Fields[0].Field
			}
			return pe
		}
	case Cancel:
		return needID(m.ID)
	case Ping:
		return needID(m.ID)
	case Accepted:
		return needID(m.ID)
	case Pong:
		return needID(m.ID)
	case Heartbeat:
		return needID(m.ID)
	case Unload, Shutdown, Loading:
	case Hello:
		if m.Protocol <= 0 {
			return bad("protocol", "must be a positive version number, got %d", m.Protocol)
		}
		if !slices.Contains(DeviceKinds, m.Device) {
			return bad("device", "must be one of %v, got %q", DeviceKinds, m.Device)
		}
		for i, d := range m.Devices {
			if d.MemoryBytes < 0 {
				return bad(fmt.Sprintf("devices[%d].memory_bytes", i), "must not be negative, got %d", d.MemoryBytes)
			}
		}
		if m.PID < 0 {
			return bad("pid", "must not be negative, got %d", m.PID)
		}
	case Progress:
		if err := needID(m.ID); err != nil {
			return err
		}
		if !slices.Contains(Stages, m.Stage) {
			return bad("stage", "must be one of %v, got %q", Stages, m.Stage)
		}
		if m.Total < 0 {
			return bad("total", "must not be negative, got %d", m.Total)
		}
		if m.Step < 0 || m.Step > m.Total {
			return bad("step", "must be between 0 and total (%d), got %d", m.Total, m.Step)
		}
		if m.ElapsedS < 0 {
			return bad("elapsed_s", "must not be negative, got %g", m.ElapsedS)
		}
	case Preview:
		if err := needID(m.ID); err != nil {
			return err
		}
		if m.Step < 0 {
			return bad("step", "must not be negative, got %d", m.Step)
		}
		if m.Path == "" {
			return bad("path", "must not be empty")
		}
	case Result:
		if err := needID(m.ID); err != nil {
			return err
		}
		if len(m.Images) == 0 {
			return bad("images", "must list at least one image")
		}
		for i, im := range m.Images {
			switch {
			case im.Path == "":
				return bad(fmt.Sprintf("images[%d].path", i), "must not be empty")
			case im.Seed < 0 || im.Seed > request.MaxSeed:
				return bad(fmt.Sprintf("images[%d].seed", i), "must be between 0 and %d, got %d", request.MaxSeed, im.Seed)
			case im.Width <= 0:
				return bad(fmt.Sprintf("images[%d].width", i), "must be positive, got %d", im.Width)
			case im.Height <= 0:
				return bad(fmt.Sprintf("images[%d].height", i), "must be positive, got %d", im.Height)
			}
		}
		if m.Metrics == nil {
			return bad("metrics", "is required")
		}
	case Error:
		if m.ID != "" {
			if err := needID(m.ID); err != nil {
				return err
			}
		}
		if !m.Code.Valid() {
			return bad("code", "%q is not one of %v", m.Code, failure.ErrorCodes)
		}
		if m.Message == "" {
			return bad("message", "must say what happened")
		}
	default:
		return bad("type", "unknown message type")
	}
	return nil
}

// Encode writes m as one protocol line, without its newline. It writes exactly the
// fields of m's type (always the required ones, even when zero, so that a step 0
// progress survives) and refuses a message that Decode would reject.
func Encode(m Message) ([]byte, error) {
	if m == nil {
		return nil, perr("", "type", "no message")
	}
	if err := check(m); err != nil {
		return nil, err
	}
	typ := m.Type()
	e := &encoder{}
	e.field("type", typ)
	switch m := m.(type) {
	case Generate:
		e.field("id", m.ID)
		e.field("request", m.Request)
	case Cancel:
		e.field("id", m.ID)
	case Ping:
		e.field("id", m.ID)
	case Accepted:
		e.field("id", m.ID)
	case Pong:
		e.field("id", m.ID)
	case Heartbeat:
		e.field("id", m.ID)
	case Unload, Shutdown:
	case Loading:
		e.field("message", m.Message)
	case Hello:
		e.field("protocol", m.Protocol)
		e.field("worker_version", m.WorkerVersion)
		e.field("device", m.Device)
		e.field("dtype", m.Dtype)
		e.field("devices", orEmpty(m.Devices))
		caps := m.Capabilities
		if caps == nil {
			caps = &Capabilities{}
		}
		e.field("capabilities", caps)
		versions := m.Versions
		if versions == nil {
			versions = map[string]string{}
		}
		e.field("versions", versions)
		if m.Host != "" {
			e.field("host", m.Host)
		}
		if m.PID != 0 {
			e.field("pid", m.PID)
		}
	case Progress:
		e.field("id", m.ID)
		e.field("stage", m.Stage)
		e.field("step", m.Step)
		e.field("total", m.Total)
		e.field("elapsed_s", m.ElapsedS)
		if m.Note != "" {
			e.field("note", m.Note)
		}
	case Preview:
		e.field("id", m.ID)
		e.field("step", m.Step)
		e.field("path", m.Path)
	case Result:
		e.field("id", m.ID)
		e.field("images", m.Images)
		e.field("metrics", m.Metrics)
		if len(m.ControlImages) > 0 {
			e.field("control_images", m.ControlImages)
		}
	case Error:
		e.field("id", m.ID)
		e.field("code", string(m.Code))
		e.field("message", m.Message)
		if m.Detail != "" {
			e.field("detail", m.Detail)
		}
		if m.Field != "" {
			e.field("field", m.Field)
		}
	}
	if e.err != nil {
		return nil, perr(typ, "", "%v", e.err)
	}
	e.buf.WriteByte('}')
	if e.buf.Len() > MaxLineBytes {
		return nil, perr(typ, "", "encoded line of %d bytes is longer than the %d-byte limit", e.buf.Len(), MaxLineBytes)
	}
	return e.buf.Bytes(), nil
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// encoder writes an object's fields in a fixed order, which keeps lines readable in logs.
type encoder struct {
	buf bytes.Buffer
	err error
}

func (e *encoder) field(key string, v any) {
	if e.err != nil {
		return
	}
	if e.buf.Len() == 0 {
		e.buf.WriteByte('{')
	} else {
		e.buf.WriteByte(',')
	}
	k, _ := json.Marshal(key)
	e.buf.Write(k)
	e.buf.WriteByte(':')
	var vb bytes.Buffer
	enc := json.NewEncoder(&vb)
	// Prompts and paths stay legible in logs: no \u003c for "<".
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		e.err = fmt.Errorf("field %q: %w", key, err)
		return
	}
	e.buf.Write(bytes.TrimSuffix(vb.Bytes(), []byte("\n")))
}

// fields reads the members of one JSON object by exact name and keeps the first error.
// A member set to null counts as absent, since Python writes None that way.
type fields struct {
	path string // prefix of this object's field names in errors: "", "capabilities.", "images[0]."
	m    map[string]json.RawMessage
	st   *decodeState // shared with nested objects, so the first error wins overall
}

type decodeState struct {
	typ string
	err *ProtocolError
}

func (f *fields) fail(key, format string, args ...any) {
	if f.st.err == nil {
		f.st.err = perr(f.st.typ, f.path+key, format, args...)
	}
}

// raw returns the member's JSON, or nil when it is absent or null.
func (f *fields) raw(key string, required bool) json.RawMessage {
	v, ok := f.m[key]
	if !ok || string(v) == "null" {
		if required {
			f.fail(key, "is required")
		}
		return nil
	}
	return v
}

// stringLists reads an optional object of string lists ({"euler": ["karras"]}).
func (f *fields) stringLists(key string) map[string][]string {
	o := f.object(key, false)
	if o == nil {
		return nil
	}
	out := make(map[string][]string, len(o.m))
	for k := range o.m {
		out[k] = orEmpty(o.strings(k, false))
	}
	return out
}

// boolean reads an optional JSON boolean (absent reads as false).
func (f *fields) boolean(key string) bool {
	v := f.raw(key, false)
	if v == nil {
		return false
	}
	switch string(v) {
	case "true":
		return true
	case "false":
		return false
	}
	f.fail(key, "must be a boolean")
	return false
}

func (f *fields) str(key string, required bool) string {
	v := f.raw(key, required)
	if v == nil {
		return ""
	}
	if v[0] != '"' {
		f.fail(key, "must be a string")
		return ""
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		f.fail(key, "must be a string")
	}
	return s
}

func (f *fields) int64(key string, required bool) int64 {
	v := f.raw(key, required)
	if v == nil {
		return 0
	}
	// encoding/json rejects 1.0 and 1e3 for an integer, as Python's isinstance(x, int) would.
	var n int64
	if err := json.Unmarshal(v, &n); err != nil {
		f.fail(key, "must be an integer, got %.40s", v)
	}
	return n
}

func (f *fields) int(key string, required bool) int {
	n := f.int64(key, required)
	if int64(int(n)) != n {
		f.fail(key, "is out of range, got %d", n)
		return 0
	}
	return int(n)
}

func (f *fields) float(key string, required bool) float64 {
	v := f.raw(key, required)
	if v == nil {
		return 0
	}
	var x float64
	if err := json.Unmarshal(v, &x); err != nil {
		f.fail(key, "must be a number, got %.40s", v)
	}
	return x
}

func (f *fields) object(key string, required bool) *fields {
	v := f.raw(key, required)
	if v == nil {
		return nil
	}
	var m map[string]json.RawMessage
	if v[0] != '{' || json.Unmarshal(v, &m) != nil {
		f.fail(key, "must be an object")
		return nil
	}
	return &fields{path: f.path + key + ".", m: m, st: f.st}
}

// array returns the member's elements, each an object. ok is false when the member is
// absent or wrong; an empty array gives a non-nil empty slice.
func (f *fields) array(key string, required bool) ([]*fields, bool) {
	v := f.raw(key, required)
	if v == nil {
		return nil, false
	}
	var items []json.RawMessage
	if v[0] != '[' || json.Unmarshal(v, &items) != nil {
		f.fail(key, "must be an array")
		return nil, false
	}
	out := make([]*fields, 0, len(items))
	for i, it := range items {
		var m map[string]json.RawMessage
		if len(it) == 0 || it[0] != '{' || json.Unmarshal(it, &m) != nil {
			f.fail(key, "element %d must be an object", i)
			return nil, false
		}
		out = append(out, &fields{path: fmt.Sprintf("%s%s[%d].", f.path, key, i), m: m, st: f.st})
	}
	return out, true
}

func (f *fields) strings(key string, required bool) []string {
	v := f.raw(key, required)
	if v == nil {
		return nil
	}
	var items []json.RawMessage
	if v[0] != '[' || json.Unmarshal(v, &items) != nil {
		f.fail(key, "must be an array of strings")
		return nil
	}
	out := make([]string, 0, len(items))
	for _, it := range items {
		var s string
		if len(it) == 0 || it[0] != '"' || json.Unmarshal(it, &s) != nil {
			f.fail(key, "must be an array of strings")
			return nil
		}
		out = append(out, s)
	}
	return out
}

func (f *fields) stringMap(key string, required bool) map[string]string {
	v := f.raw(key, required)
	if v == nil {
		return nil
	}
	var items map[string]json.RawMessage
	if v[0] != '{' || json.Unmarshal(v, &items) != nil {
		f.fail(key, "must be an object of strings")
		return nil
	}
	if len(items) == 0 {
		// An empty object reads as an absent one, as the encoder leaves empty maps out.
		return nil
	}
	out := make(map[string]string, len(items))
	for k, it := range items {
		var s string
		if len(it) == 0 || it[0] != '"' || json.Unmarshal(it, &s) != nil {
			f.fail(key, "must map names to strings, and %q is not a string", k)
			return nil
		}
		out[k] = s
	}
	return out
}
