package library

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/internal/sttest"
)

// writeSafetensors writes a real safetensors file: the header names each
// tensor (4 float32 zeros each), then the data.
func writeSafetensors(t *testing.T, path string, keys ...string) {
	t.Helper()
	sttest.Write(t, path, keys...)
}

func writeJSON(t *testing.T, path, content string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
}

func TestClassifyTensorNames(t *testing.T) {
	for _, tc := range []struct {
		keys []string
		want ModelKind
	}{
		{[]string{"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", "lora_unet_x.alpha"}, KindLoRA},
		{[]string{"unet.down_blocks.0.attentions.0.to_q.lora_A.weight"}, KindLoRA},
		{[]string{"unet.down_blocks.0.attentions.0.processor.to_q_lora.down.weight"}, KindLoRA},
		{[]string{"control_model.input_blocks.0.0.weight", "control_model.zero_convs.0.0.weight"}, KindControlNet},
		{[]string{"controlnet_cond_embedding.conv_in.weight", "down_blocks.0.resnets.0.conv1.weight"}, KindControlNet},
		{[]string{"conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
			"conditioner.embedders.1.model.ln_final.weight", "model.diffusion_model.input_blocks.0.0.weight"}, KindCheckpoint},
		{[]string{"conditioner.embedders.0.model.ln_final.weight", "model.diffusion_model.out.2.weight"}, KindRefiner},
		{[]string{"encoder.conv_in.weight", "decoder.conv_out.weight", "quant_conv.weight", "post_quant_conv.bias"}, KindVAE},
		{[]string{"model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight"}, KindUpscaler},
		{[]string{"conv_first.weight", "body.0.rdb1.conv1.weight", "conv_up1.weight"}, KindUpscaler},
		{[]string{"text_model.embeddings.token_embedding.weight"}, KindUnknown},
	} {
		kind, why := ClassifyTensorNames(tc.keys)
		assert.Equal(t, tc.want, kind, "%v", tc.keys)
		if kind != KindUnknown {
			assert.NotEmpty(t, why)
		}
	}
}

func TestScanLibraryClassifiesFoldersAndFiles(t *testing.T) {
	root := t.TempDir()
	// Diffusers folders.
	writeJSON(t, filepath.Join(root, "sdxl-base", "model_index.json"), `{"_class_name":"StableDiffusionXLPipeline"}`)
	writeJSON(t, filepath.Join(root, "sdxl-base", "unet", "config.json"), `{"_class_name":"UNet2DConditionModel"}`)
	writeJSON(t, filepath.Join(root, "sdxl-base", "vae", "config.json"), `{"_class_name":"AutoencoderKL"}`)
	writeJSON(t, filepath.Join(root, "refiner", "model_index.json"), `{"_class_name":"StableDiffusionXLImg2ImgPipeline"}`)
	require.NoError(t, os.MkdirAll(filepath.Join(root, "refiner", "text_encoder_2"), 0o755))
	writeJSON(t, filepath.Join(root, "controlnet", "canny-sdxl", "config.json"), `{"_class_name":"ControlNetModel"}`)
	writeJSON(t, filepath.Join(root, "vae", "sdxl-vae-fp16-fix", "config.json"), `{"_class_name":"AutoencoderKL"}`)
	writeJSON(t, filepath.Join(root, "sd15", "model_index.json"), `{"_class_name":"StableDiffusionPipeline"}`)
	// Single files.
	writeSafetensors(t, filepath.Join(root, "checkpoints", "juggernaut.safetensors"),
		"conditioner.embedders.0.transformer.x", "conditioner.embedders.1.model.x", "model.diffusion_model.x")
	writeSafetensors(t, filepath.Join(root, "loras", "detail.safetensors"), "lora_unet_a.lora_down.weight")
	writeSafetensors(t, filepath.Join(root, "loras", "vae.safetensors"), "encoder.conv_in.weight", "decoder.conv_out.weight")
	writeSafetensors(t, filepath.Join(root, "upscale", "4x-ultrasharp.safetensors"), "model.0.weight", "model.1.sub.0.weight")
	writeSafetensors(t, filepath.Join(root, "checkpoints", "sd15.safetensors"), "model.diffusion_model.x", "cond_stage_model.x")
	require.NoError(t, os.WriteFile(filepath.Join(root, "checkpoints", "old.ckpt"), []byte("pickle"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(root, "loras", "broken.safetensors"), []byte("abc"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(root, "loras", "readme.txt"), []byte("hi"), 0o644))

	lib := ScanLibrary([]string{root})
	byName := map[string]LibraryEntry{}
	for _, e := range lib.Entries {
		byName[e.Name] = e
	}
	want := map[string]ModelKind{
		"sdxl-base": KindCheckpoint, "refiner": KindRefiner, "canny-sdxl": KindControlNet,
		"sdxl-vae-fp16-fix": KindVAE, "juggernaut": KindCheckpoint, "detail": KindLoRA, "vae": KindVAE,
		"4x-ultrasharp": KindUpscaler,
	}
	for name, kind := range want {
		e, ok := byName[name]
		if assert.True(t, ok, "%s not found in %+v", name, lib.Entries) {
			assert.Equal(t, kind, e.Kind, name)
			assert.Empty(t, e.Refused, name)
		}
	}
	assert.Len(t, lib.Entries, len(want)+4, "the unet/ and vae/ of a pipeline are not models of their own; readme.txt is no model")
	for _, name := range []string{"old.ckpt", "sd15", "broken"} {
		e, ok := byName[name]
		require.True(t, ok, name)
		assert.NotEmpty(t, e.Refused, name)
	}
	assert.Contains(t, byName["old.ckpt"].Refused, "pickle")
	assert.Equal(t, []string{filepath.Join(root, "loras", "detail.safetensors")}, lib.Paths(KindLoRA))
	assert.Len(t, lib.Of(KindCheckpoint), 2, "refused checkpoints are not offered")
}

type memSettings map[string]string

func (m memSettings) GetSetting(_ context.Context, k string) (string, bool, error) {
	v, ok := m[k]
	return v, ok, nil
}

func (m memSettings) SetSetting(_ context.Context, k, v string) error { m[k] = v; return nil }

func TestLibraryFoldersAreStoredInTheSettings(t *testing.T) {
	ctx := context.Background()
	s := memSettings{}
	dir := t.TempDir()
	folders, err := LibraryFolders(ctx, s)
	require.NoError(t, err)
	assert.Empty(t, folders)
	got, err := AddLibraryFolder(ctx, s, dir)
	require.NoError(t, err)
	assert.Equal(t, dir, got)
	_, err = AddLibraryFolder(ctx, s, dir)
	require.NoError(t, err)
	folders, err = LibraryFolders(ctx, s)
	require.NoError(t, err)
	assert.Equal(t, []string{dir}, folders, "a folder added twice is kept once")
	_, err = AddLibraryFolder(ctx, s, filepath.Join(dir, "missing"))
	assert.Error(t, err)
	removed, err := RemoveLibraryFolder(ctx, s, dir)
	require.NoError(t, err)
	assert.True(t, removed)
	folders, err = LibraryFolders(ctx, s)
	require.NoError(t, err)
	assert.Empty(t, folders)
}

func TestOtherAppsModelFoldersAreFoundOnFirstUseOnly(t *testing.T) {
	ctx := context.Background()
	home := t.TempDir()
	t.Setenv("HF_HUB_CACHE", "")
	t.Setenv("HF_HOME", "")
	a1111 := filepath.Join(home, "stable-diffusion-webui", "models")
	comfy := filepath.Join(home, "ComfyUI", "models")
	hub := filepath.Join(home, ".cache", "huggingface", "hub")
	snapshot := filepath.Join(hub, "models--stabilityai--stable-diffusion-xl-base-1.0", "snapshots", "462165984030")
	writeSafetensors(t, filepath.Join(a1111, "Stable-diffusion", "juggernaut.safetensors"),
		"conditioner.embedders.0.transformer.x", "conditioner.embedders.1.model.x", "model.diffusion_model.x")
	writeSafetensors(t, filepath.Join(comfy, "loras", "detail.safetensors"), "lora_unet_a.lora_down.weight")
	writeJSON(t, filepath.Join(snapshot, "model_index.json"), `{"_class_name":"StableDiffusionXLPipeline"}`)
	require.NoError(t, os.MkdirAll(filepath.Join(home, "Fooocus"), 0o755)) // no models/ in it: not offered

	assert.Equal(t, []string{a1111, comfy, hub}, FindModelFolders(home))

	s := memSettings{}
	added, err := DiscoverLibraryFolders(ctx, s, home)
	require.NoError(t, err)
	assert.Equal(t, []string{a1111, comfy, hub}, added)
	folders, err := LibraryFolders(ctx, s)
	require.NoError(t, err)
	assert.Equal(t, added, folders)

	lib := ScanLibrary(folders)
	names := map[string]ModelKind{}
	for _, e := range lib.Entries {
		names[e.Name] = e.Kind
	}
	assert.Equal(t, map[string]ModelKind{"juggernaut": KindCheckpoint, "detail": KindLoRA,
		"stabilityai/stable-diffusion-xl-base-1.0": KindCheckpoint}, names, "a hub snapshot is named by its repository")

	// The user's own list is never changed again, even when emptied.
	_, err = RemoveLibraryFolder(ctx, s, comfy)
	require.NoError(t, err)
	added, err = DiscoverLibraryFolders(ctx, s, home)
	require.NoError(t, err)
	assert.Empty(t, added)
	folders, err = LibraryFolders(ctx, s)
	require.NoError(t, err)
	assert.Equal(t, []string{a1111, hub}, folders)

	// HF_HUB_CACHE, then HF_HOME, say where the hub cache is.
	t.Setenv("HF_HOME", filepath.Join(home, "hf"))
	require.NoError(t, os.MkdirAll(filepath.Join(home, "hf", "hub"), 0o755))
	assert.Contains(t, FindModelFolders(home), filepath.Join(home, "hf", "hub"))
	t.Setenv("HF_HUB_CACHE", snapshot)
	assert.Equal(t, snapshot, FindModelFolders(home)[2])
}

func TestScanFoldersPutAtelierOwnFolderFirstOnce(t *testing.T) {
	own := filepath.Join(t.TempDir(), "models")
	mine := t.TempDir()
	assert.Equal(t, []string{own}, ScanFolders(own, nil))
	assert.Equal(t, []string{own, mine}, ScanFolders(own, []string{mine}))
	// A list saved when downloads added the own folder to it keeps it once, first.
	assert.Equal(t, []string{own, mine}, ScanFolders(own, []string{mine, own + string(filepath.Separator)}))
	assert.Equal(t, []string{mine}, ScanFolders("", []string{mine}), "no own folder (tests of other parts)")
}
