package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"atelier/core/download/hubtest"
	"atelier/core/library"
)

func (h *home) runEnv(env []string, args ...string) (string, string, int) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := h.command(ctx, args...)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		exit, ok := err.(*exec.ExitError)
		require.True(h.t, ok, "run atelier %v: %v", args, err)
		code = exit.ExitCode()
	}
	return stdout.String(), stderr.String(), code
}

func TestModelsDownloadPutsSDXLBaseInTheLibrary(t *testing.T) {
	requireWorker(t)
	url := hubtest.Start(t)
	h := newHome(t)
	out, errOut, code := h.runEnv(hubtest.Env(t, url), "models", "download", "base")
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	dest := filepath.Join(h.dir, "data", "models", "stable-diffusion-xl-base-1.0")
	require.Contains(t, out, "downloaded base to "+dest+" (a checkpoint in the library)")
	require.Contains(t, errOut, "downloading stabilityai/stable-diffusion-xl-base-1.0")
	require.Contains(t, errOut, "100% ")
	require.FileExists(t, filepath.Join(dest, "unet", "diffusion_pytorch_model.fp16.safetensors"))
	require.NoFileExists(t, filepath.Join(dest, "sd_xl_base_1.0.safetensors"))

	// Atelier's models folder, which the library always scans, holds a usable checkpoint.
	out, errOut, code = h.run("models", "--json")
	require.Equal(t, 0, code, errOut)
	var lib library.Library
	require.NoError(t, json.Unmarshal([]byte(out), &lib))
	require.Equal(t, []string{filepath.Join(h.dir, "data", "models")}, lib.Folders)
	require.Contains(t, lib.Entries, library.LibraryEntry{Path: dest, Name: "stable-diffusion-xl-base-1.0",
		Kind: library.KindCheckpoint, Format: "diffusers", Detail: "model_index.json _class_name StableDiffusionXLPipeline"})

	// A second run finds everything there and fetches nothing.
	out, errOut, code = h.runEnv(hubtest.Env(t, url), "models", "download", "base", "--json")
	require.Equal(t, 0, code, errOut)
	var plan struct{ Total, Done int64 }
	require.NoError(t, json.Unmarshal(bytes.SplitN([]byte(out), []byte("\n"), 2)[0], &plan))
	require.Equal(t, plan.Total, plan.Done)
}

func TestModelsDownloadOfflineSaysWhatToDo(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	dest := filepath.Join(t.TempDir(), "models")
	_, errOut, code := h.runEnv(hubtest.Env(t, "http://127.0.0.1:9"), "models", "download", "vae", "--dest", dest)
	require.Equal(t, exitFailure, code, errOut)
	require.Contains(t, errOut, "Cannot reach the Hugging Face hub (http://127.0.0.1:9) to download madebyollin/sdxl-vae-fp16-fix")
	require.Contains(t, errOut, "add its folder to the library")
	entries, _ := os.ReadDir(filepath.Join(dest, "sdxl-vae-fp16-fix"))
	require.Empty(t, entries)
}

func TestModelsDownloadRefusesABadName(t *testing.T) {
	h := newHome(t)
	_, errOut, code := h.run("models", "download", "juggernaut")
	require.Equal(t, exitUsage, code)
	require.Contains(t, errOut, `"juggernaut" is neither base, refiner, vae nor a hub repository`)
}
