package protocol

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"atelier/core/failure"
	"atelier/core/request"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// vectorDir holds the protocol test vectors shared with the Python worker's pytest suite,
// next to the protocol spec.
const vectorDir = "../../docs/protocol/vectors"

// vectorFiles lists one vector folder ("valid" or "invalid"). docs/protocol.md names the
// files *.json and the worker's suite *.jsonl; both are one raw protocol line.
func vectorFiles(t testing.TB, kind string) []string {
	t.Helper()
	var files []string
	for _, pat := range []string{"*.json", "*.jsonl"} {
		m, err := filepath.Glob(filepath.Join(vectorDir, kind, pat))
		require.NoError(t, err)
		files = append(files, m...)
	}
	return files
}

func TestVectors(t *testing.T) {
	// expected_fields.json names the field each invalid vector's error must name.
	var expected map[string]string
	raw, err := os.ReadFile(filepath.Join(vectorDir, "expected_fields.json"))
	require.NoError(t, err, "the vectors come with expected_fields.json")
	require.NoError(t, json.Unmarshal(raw, &expected))
	for _, kind := range []string{"valid", "invalid"} {
		files := vectorFiles(t, kind)
		require.NotEmpty(t, files, "no protocol vectors in %s/%s: the shared vectors live next to the protocol spec (docs/protocol/vectors); restore them before testing", vectorDir, kind)
		for _, path := range files {
			t.Run(kind+"/"+filepath.Base(path), func(t *testing.T) {
				line, err := os.ReadFile(path)
				require.NoError(t, err)
				m, err := Decode(line)
				if kind == "invalid" {
					require.Error(t, err, "decoded an invalid vector as %+v", m)
					assert.ErrorIs(t, err, ErrMalformed)
					name := strings.TrimSuffix(strings.TrimSuffix(filepath.Base(path), ".jsonl"), ".json")
					field, ok := expected[name]
					require.True(t, ok, "expected_fields.json has no entry for %s", name)
					var pe *ProtocolError
					require.ErrorAs(t, err, &pe)
					assert.Equal(t, field, pe.Field, "error %q names the wrong field", err)
					return
				}
				require.NoError(t, err)
				assertRoundTrip(t, m)
			})
		}
	}
}

// assertRoundTrip checks that a decoded message encodes to a line that decodes to the
// same message, and that encoding is stable.
func assertRoundTrip(t testing.TB, m Message) {
	t.Helper()
	line, err := Encode(m)
	require.NoError(t, err, "a decoded message must re-encode: %+v", m)
	back, err := Decode(line)
	require.NoError(t, err, "re-encoded line must decode: %s", line)
	require.Equal(t, m, back, "line %s", line)
	again, err := Encode(back)
	require.NoError(t, err)
	require.Equal(t, string(line), string(again))
}

const (
	validRequest = `{"prompt":"a lighthouse","negative_prompt":"fog","model":"tiny","scheduler":"euler","steps":4,"cfg":5,"width":64,"height":64,"seed":7,"batch_size":1,"output_dir":"/tmp/out","preview_every":1}`
	helloLine    = `{"type":"hello","protocol":1,"worker_version":"0.1.0","device":"cpu","dtype":"float32","devices":[{"name":"CPU","kind":"cpu","memory_bytes":0}],"capabilities":{"schedulers":["euler"],"controlnet_types":[],"features":["preview"]},"versions":{"python":"3.12","torch":"2.5","diffusers":"0.31"}}`
	resultLine   = `{"type":"result","id":"j1","images":[{"path":"/tmp/out/a.png","seed":7,"width":64,"height":64}],"metrics":{"total_s":1.5,"load_s":0.5,"denoise_s":0.9,"its":4.4,"device":"cpu","dtype":"float32","peak_mem_bytes":0}}`
)

func TestDecodeValid(t *testing.T) {
	tests := []struct {
		name string
		line string
		want Message
	}{
		{"generate", `{"type":"generate","id":"job-1","request":` + validRequest + `}`, Generate{ID: "job-1", Request: &request.Request{
			Prompt: "a lighthouse", NegativePrompt: "fog", Model: "tiny", Scheduler: "euler", Steps: 4, CFG: 5,
			Width: 64, Height: 64, Seed: 7, BatchSize: 1, OutputDir: "/tmp/out", PreviewEvery: 1}}},
		{"generate minimal", `{"type":"generate","id":"a","request":{"prompt":"p","model":"tiny","steps":1,"cfg":0,"width":64,"height":64,"seed":0,"output_dir":"/o"}}`,
			Generate{ID: "a", Request: &request.Request{Prompt: "p", Model: "tiny", Steps: 1, Width: 64, Height: 64, OutputDir: "/o"}}},
		{"cancel", `{"type":"cancel","id":"A.b_c-9"}`, Cancel{ID: "A.b_c-9"}},
		{"ping", `{"type":"ping","id":"p1"}`, Ping{ID: "p1"}},
		{"unload", `{"type":"unload"}`, Unload{}},
		{"shutdown", `{"type":"shutdown"}`, Shutdown{}},
		{"loading", `{"type":"loading","message":"importing torch"}`, Loading{Message: "importing torch"}},
		{"hello", helloLine, Hello{Protocol: 1, WorkerVersion: "0.1.0", Device: "cpu", Dtype: "float32",
			Devices:      []Device{{Name: "CPU", Kind: "cpu"}},
			Capabilities: &Capabilities{Schedulers: []string{"euler"}, ControlNetTypes: []string{}, Features: []string{"preview"}},
			Versions:     map[string]string{"python": "3.12", "torch": "2.5", "diffusers": "0.31"}}},
		{"hello from a newer protocol still decodes", strings.Replace(helloLine, `"protocol":1`, `"protocol":2`, 1), Hello{Protocol: 2,
			WorkerVersion: "0.1.0", Device: "cpu", Dtype: "float32", Devices: []Device{{Name: "CPU", Kind: "cpu"}},
			Capabilities: &Capabilities{Schedulers: []string{"euler"}, ControlNetTypes: []string{}, Features: []string{"preview"}},
			Versions:     map[string]string{"python": "3.12", "torch": "2.5", "diffusers": "0.31"}}},
		{"accepted", `{"type":"accepted","id":"j1"}`, Accepted{ID: "j1"}},
		{"progress at step 0", `{"type":"progress","id":"j1","stage":"loading_model","step":0,"total":0,"elapsed_s":0}`,
			Progress{ID: "j1", Stage: "loading_model"}},
		{"progress", `{"type":"progress","id":"j1","stage":"denoising","step":2,"total":4,"elapsed_s":0.25}`,
			Progress{ID: "j1", Stage: "denoising", Step: 2, Total: 4, ElapsedS: 0.25}},
		{"optimizing with a note", `{"type":"progress","id":"j1","stage":"optimizing","step":0,"total":0,"elapsed_s":1,"note":"not enough free GPU memory"}`,
			Progress{ID: "j1", Stage: "optimizing", ElapsedS: 1, Note: "not enough free GPU memory"}},
		{"preview", `{"type":"preview","id":"j1","step":1,"path":"/tmp/out/preview.png"}`, Preview{ID: "j1", Step: 1, Path: "/tmp/out/preview.png"}},
		{"result", resultLine, Result{ID: "j1", Images: []ImageResult{{Path: "/tmp/out/a.png", Seed: 7, Width: 64, Height: 64}},
			Metrics: &Metrics{TotalS: 1.5, LoadS: 0.5, DenoiseS: 0.9, ItS: 4.4, Device: "cpu", Dtype: "float32"}}},
		{"result with versions and speed", strings.Replace(resultLine, `"peak_mem_bytes":0`,
			`"peak_mem_bytes":0,"versions":{"torch":"2.9.1","diffusers":"0.36.0"},"speed":{"compile":"off","vae_dtype":"float32"}`, 1),
			Result{ID: "j1", Images: []ImageResult{{Path: "/tmp/out/a.png", Seed: 7, Width: 64, Height: 64}},
				Metrics: &Metrics{TotalS: 1.5, LoadS: 0.5, DenoiseS: 0.9, ItS: 4.4, Device: "cpu", Dtype: "float32",
					Versions: map[string]string{"torch": "2.9.1", "diffusers": "0.36.0"},
					Speed:    map[string]string{"compile": "off", "vae_dtype": "float32"}}}},
		{"result with sparse metrics", `{"type":"result","id":"j1","images":[{"path":"/a.png","seed":0,"width":64,"height":64}],"metrics":{"total_s":1,"peak_mem_bytes":null}}`,
			Result{ID: "j1", Images: []ImageResult{{Path: "/a.png", Width: 64, Height: 64}}, Metrics: &Metrics{TotalS: 1}}},
		{"error", `{"type":"error","id":"j1","code":"invalid_request","message":"steps must be 1-150","detail":"","field":"steps"}`,
			Error{ID: "j1", Code: failure.ErrInvalidRequest, Message: "steps must be 1-150", Field: "steps"}},
		{"error about an unreadable line has no id", `{"type":"error","code":"internal","message":"could not read the line","detail":"Traceback"}`,
			Error{Code: failure.ErrInternal, Message: "could not read the line", Detail: "Traceback"}},
		{"error with an empty id", `{"type":"error","id":"","code":"internal","message":"m"}`, Error{Code: failure.ErrInternal, Message: "m"}},
		{"null optional fields read as absent", `{"type":"error","id":"j1","code":"cancelled","message":"cancelled","detail":null,"field":null}`,
			Error{ID: "j1", Code: failure.ErrCancelled, Message: "cancelled"}},
		{"pong", `{"type":"pong","id":"p1"}`, Pong{ID: "p1"}},
		{"unknown fields are ignored", `{"type":"accepted","id":"j1","queue_position":3,"extra":{"a":[1,2]}}`, Accepted{ID: "j1"}},
		{"trailing newline", "{\"type\":\"unload\"}\n", Unload{}},
		{"trailing CRLF", "{\"type\":\"unload\"}\r\n", Unload{}},
		{"spaces between tokens", ` { "type" : "ping" , "id" : "p" } `, Ping{ID: "p"}},
		{"64-character id", `{"type":"ping","id":"` + strings.Repeat("x", 64) + `"}`, Ping{ID: strings.Repeat("x", 64)}},
		{"non-ASCII prompt", `{"type":"generate","id":"a","request":{"prompt":"phare \u00e0 l'aube 灯台","model":"tiny","steps":1,"cfg":1.5,"width":64,"height":72,"seed":9007199254740991,"output_dir":"/o"}}`,
			Generate{ID: "a", Request: &request.Request{Prompt: "phare à l'aube 灯台", Model: "tiny", Steps: 1, CFG: 1.5, Width: 64, Height: 72, Seed: request.MaxSeed, OutputDir: "/o"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode([]byte(tt.line))
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			assertRoundTrip(t, got)
		})
	}
}

func TestDecodeLineLimit(t *testing.T) {
	pad := func(n int) []byte {
		const head, tail = `{"type":"unload","pad":"`, `"}`
		return []byte(head + strings.Repeat("x", n-len(head)-len(tail)) + tail)
	}
	_, err := Decode(pad(MaxLineBytes))
	require.NoError(t, err, "a line of exactly the limit is allowed")
	_, err = Decode(append(pad(MaxLineBytes), '\n'))
	require.NoError(t, err, "the newline does not count")
	_, err = Decode(pad(MaxLineBytes + 1))
	require.ErrorIs(t, err, ErrMalformed)
	assert.Contains(t, err.Error(), "longer than")
}

func TestDecodeInvalid(t *testing.T) {
	gen := func(field, value string) string {
		// One request field of an otherwise valid generate replaced, or dropped when value is "".
		var req map[string]json.RawMessage
		require.NoError(t, json.Unmarshal([]byte(validRequest), &req))
		if value == "" {
			delete(req, field)
		} else {
			req[field] = json.RawMessage(value)
		}
		b, err := json.Marshal(req)
		require.NoError(t, err)
		return `{"type":"generate","id":"j1","request":` + string(b) + `}`
	}
	tests := []struct {
		name, line, field string
	}{
		{"empty line", ``, ""},
		{"null", `null`, ""},
		{"array", `[{"type":"unload"}]`, ""},
		{"string", `"unload"`, ""},
		{"no type", `{"id":"a"}`, "type"},
		{"type not a string", `{"type":1}`, "type"},
		{"unknown type", `{"type":"reboot"}`, "type"},
		{"type in the wrong case", `{"type":"Ping","id":"a"}`, "type"},
		{"field names match exactly", `{"TYPE":"ping","id":"a"}`, "type"},
		{"two objects", `{"type":"unload"}{"type":"unload"}`, ""},
		{"trailing garbage", `{"type":"unload"} x`, ""},
		{"line break inside", "{\"type\":\n\"unload\"}", ""},
		{"invalid UTF-8", "{\"type\":\"loading\",\"message\":\"\xff\"}", ""},
		{"truncated", `{"type":"progress","id":"j1","stage":"denoising","step":1,"to`, ""},
		{"ping without id", `{"type":"ping"}`, "id"},
		{"cancel with empty id", `{"type":"cancel","id":""}`, "id"},
		{"id with a space", `{"type":"cancel","id":"a b"}`, "id"},
		{"id with a slash", `{"type":"accepted","id":"../x"}`, "id"},
		{"id of 65 characters", `{"type":"pong","id":"` + strings.Repeat("x", 65) + `"}`, "id"},
		{"id not a string", `{"type":"pong","id":7}`, "id"},
		{"id null", `{"type":"pong","id":null}`, "id"},
		{"generate without request", `{"type":"generate","id":"j1"}`, "request"},
		{"generate with request not an object", `{"type":"generate","id":"j1","request":"draw"}`, "request"},
		{"empty prompt", gen("prompt", `"  "`), "prompt"},
		{"no model", gen("model", ``), "model"},
		{"unknown scheduler", gen("scheduler", `"plms"`), "scheduler"},
		{"steps 0", gen("steps", `0`), "steps"},
		{"steps 151", gen("steps", `151`), "steps"},
		{"steps as float", gen("steps", `4.0`), "steps"},
		{"steps as exponent", gen("steps", `4e0`), "steps"},
		{"steps as string", gen("steps", `"4"`), "steps"},
		{"steps as bool", gen("steps", `true`), "steps"},
		{"no steps", gen("steps", ``), "steps"},
		{"no cfg", gen("cfg", ``), "cfg"},
		{"cfg 31", gen("cfg", `31`), "cfg"},
		{"cfg as string", gen("cfg", `"5"`), "cfg"},
		{"width not a multiple of 8", gen("width", `65`), "width"},
		{"height too large", gen("height", `4104`), "height"},
		{"unresolved seed", gen("seed", `-1`), "seed"},
		{"seed above 2^53-1", gen("seed", `9007199254740992`), "seed"},
		{"seed overflowing int64", gen("seed", `99999999999999999999`), "seed"},
		{"no seed", gen("seed", ``), "seed"},
		{"batch 9", gen("batch_size", `9`), "batch_size"},
		{"negative preview_every", gen("preview_every", `-1`), "preview_every"},
		{"relative output_dir", gen("output_dir", `"out"`), "output_dir"},
		{"no output_dir", gen("output_dir", ``), "output_dir"},
		{"hello without protocol", strings.Replace(helloLine, `"protocol":1,`, ``, 1), "protocol"},
		{"hello protocol 0", strings.Replace(helloLine, `"protocol":1`, `"protocol":0`, 1), "protocol"},
		{"hello protocol negative", strings.Replace(helloLine, `"protocol":1`, `"protocol":-1`, 1), "protocol"},
		{"hello protocol as string", strings.Replace(helloLine, `"protocol":1`, `"protocol":"1"`, 1), "protocol"},
		{"hello unknown device", strings.Replace(helloLine, `"device":"cpu"`, `"device":"tpu"`, 1), "device"},
		{"hello devices not an array", strings.Replace(helloLine, `"devices":[{"name":"CPU","kind":"cpu","memory_bytes":0}]`, `"devices":{}`, 1), "devices"},
		{"hello device without name", strings.Replace(helloLine, `"name":"CPU",`, ``, 1), "devices[0].name"},
		{"hello schedulers not strings", strings.Replace(helloLine, `"schedulers":["euler"]`, `"schedulers":[1]`, 1), "capabilities.schedulers"},
		{"hello versions not strings", strings.Replace(helloLine, `"python":"3.12"`, `"python":3.12`, 1), "versions"},
		{"hello without capabilities", strings.Replace(helloLine, `"capabilities":{"schedulers":["euler"],"controlnet_types":[],"features":["preview"]},`, ``, 1), "capabilities"},
		{"loading without message", `{"type":"loading"}`, "message"},
		{"progress unknown stage", `{"type":"progress","id":"j1","stage":"dreaming","step":1,"total":4,"elapsed_s":0}`, "stage"},
		{"progress negative step", `{"type":"progress","id":"j1","stage":"denoising","step":-1,"total":4,"elapsed_s":0}`, "step"},
		{"progress step beyond total", `{"type":"progress","id":"j1","stage":"denoising","step":5,"total":4,"elapsed_s":0}`, "step"},
		{"progress negative total", `{"type":"progress","id":"j1","stage":"denoising","step":0,"total":-1,"elapsed_s":0}`, "total"},
		{"result image without width", `{"type":"result","id":"j1","images":[{"path":"/a.png","seed":1,"height":64}],"metrics":{}}`, "images[0].width"},
		{"progress without elapsed_s", `{"type":"progress","id":"j1","stage":"denoising","step":1,"total":4}`, "elapsed_s"},
		{"progress without id", `{"type":"progress","stage":"denoising","step":1,"total":4,"elapsed_s":0}`, "id"},
		{"preview without path", `{"type":"preview","id":"j1","step":1}`, "path"},
		{"result without images", `{"type":"result","id":"j1","metrics":{}}`, "images"},
		{"result with no image", `{"type":"result","id":"j1","images":[],"metrics":{}}`, "images"},
		{"result image not an object", `{"type":"result","id":"j1","images":["/a.png"],"metrics":{}}`, "images"},
		{"result image negative seed", strings.Replace(resultLine, `"seed":7`, `"seed":-7`, 1), "images[0].seed"},
		{"result without metrics", `{"type":"result","id":"j1","images":[{"path":"/a.png","seed":1,"width":64,"height":64}]}`, "metrics"},
		{"error with unknown code", `{"type":"error","id":"j1","code":"oops","message":"m"}`, "code"},
		{"error without code", `{"type":"error","id":"j1","message":"m"}`, "code"},
		{"error without message", `{"type":"error","id":"j1","code":"internal"}`, "message"},
		{"error with empty message", `{"type":"error","id":"j1","code":"internal","message":""}`, "message"},
		{"error with a bad id", `{"type":"error","id":"a b","code":"internal","message":"m"}`, "id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Decode([]byte(tt.line))
			require.Error(t, err, "decoded as %+v from %s", m, tt.line)
			assert.ErrorIs(t, err, ErrMalformed)
			var pe *ProtocolError
			require.ErrorAs(t, err, &pe)
			assert.Equal(t, tt.field, pe.Field, "error %q names the wrong field", err)
			assert.NotEmpty(t, pe.Reason)
			assert.Nil(t, m)
		})
	}
}

func TestDecodeGenerateKeepsFieldErrors(t *testing.T) {
	_, err := Decode([]byte(`{"type":"generate","id":"j1","request":{"prompt":"","model":"tiny","steps":0,"cfg":5,"width":64,"height":64,"seed":1,"output_dir":"rel"}}`))
	require.ErrorIs(t, err, ErrMalformed)
	v, ok := request.AsValidation(err)
	require.True(t, ok, "the request's field errors must be reachable: %v", err)
	assert.NotNil(t, v.Field("prompt"))
	assert.NotNil(t, v.Field("steps"))
	assert.NotNil(t, v.Field("output_dir"))
	assert.Nil(t, v.Field("width"))
}

func TestEncodeMessage(t *testing.T) {
	line, err := Encode(Progress{ID: "j1", Stage: "denoising"})
	require.NoError(t, err)
	assert.Equal(t, `{"type":"progress","id":"j1","stage":"denoising","step":0,"total":0,"elapsed_s":0}`, string(line),
		"zero but required fields are written")

	line, err = Encode(Error{Code: failure.ErrInternal, Message: "could not read <line>"})
	require.NoError(t, err)
	assert.Equal(t, `{"type":"error","id":"","code":"internal","message":"could not read <line>"}`, string(line))

	// A cancel has no other field to write: its type holds only the id.
	line, err = Encode(Cancel{ID: "j1"})
	require.NoError(t, err)
	assert.Equal(t, `{"type":"cancel","id":"j1"}`, string(line), "only the type's own fields are written")

	line, err = Encode(Hello{Protocol: 1, Device: "cpu"})
	require.NoError(t, err)
	m, err := Decode(line)
	require.NoError(t, err, "a hello with nil lists still encodes to a valid line: %s", line)
	assert.Equal(t, 1, m.(Hello).Protocol)

	req := request.Request{Prompt: "p", Model: "tiny", Steps: 2, CFG: 0, Width: 64, Height: 64, Seed: 0, OutputDir: "/o"}
	line, err = Encode(Generate{ID: "j1", Request: &req})
	require.NoError(t, err)
	assert.Contains(t, string(line), `"cfg":0`)
	assert.Contains(t, string(line), `"seed":0`)
	assert.NotContains(t, string(line), "\n")
}

func TestEncodeRefusesInvalid(t *testing.T) {
	good := request.Request{Prompt: "p", Model: "tiny", Steps: 2, CFG: 5, Width: 64, Height: 64, Seed: 3, OutputDir: "/o"}
	withSeed := good
	withSeed.Seed = -1
	relative := good
	relative.OutputDir = "o"
	tests := []struct {
		name string
		m    Message
	}{
		// An unknown type cannot be built any more: every Message is one of the protocol's.
		{"no message", nil},
		{"generate without request", Generate{ID: "j1"}},
		{"generate with unresolved seed", Generate{ID: "j1", Request: &withSeed}},
		{"generate with relative output_dir", Generate{ID: "j1", Request: &relative}},
		{"cancel with bad id", Cancel{ID: "a/b"}},
		{"error with unknown code", Error{ID: "j1", Code: "oops", Message: "m"}},
		{"hello protocol 0", Hello{Device: "cpu"}},
		{"result without images", Result{ID: "j1", Metrics: &Metrics{}}},
		{"loading too long", Loading{Message: strings.Repeat("x", MaxLineBytes)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line, err := Encode(tt.m)
			require.Error(t, err, "encoded %s", line)
			assert.ErrorIs(t, err, ErrMalformed)
		})
	}
	_, err := Encode(Generate{ID: "j1", Request: &withSeed})
	v, ok := request.AsValidation(err)
	require.True(t, ok)
	assert.NotNil(t, v.Field("seed"))
}

func TestValidID(t *testing.T) {
	for id, want := range map[string]bool{
		"a": true, "job-1.2_x": true, strings.Repeat("Z", 64): true,
		"": false, strings.Repeat("Z", 65): false, "a b": false, "a/b": false, "é": false, "a\n": false,
	} {
		assert.Equal(t, want, ValidID(id), "%q", id)
	}
}

// FuzzDecodeMessage checks that no line makes Decode panic, that every rejection
// wraps ErrMalformed, and that whatever decodes re-encodes to a line that decodes to an
// equal message.
func FuzzDecodeMessage(f *testing.F) {
	for _, kind := range []string{"valid", "invalid"} {
		for _, path := range vectorFiles(f, kind) {
			line, err := os.ReadFile(path)
			require.NoError(f, err)
			f.Add(line)
		}
	}
	for _, s := range []string{
		`{"type":"generate","id":"job-1","request":` + validRequest + `}`, helloLine, resultLine,
		`{"type":"progress","id":"j1","stage":"denoising","step":0,"total":4,"elapsed_s":0}`,
		`{"type":"error","code":"internal","message":"m","detail":null}`, `{"type":"unload"}`, `null`, `[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		m, err := Decode(line)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("rejection does not wrap ErrMalformed: %v", err)
			}
			return
		}
		assertRoundTrip(t, m)
	})
}
