package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"text/tabwriter"

	"atelier/core/library"
	"atelier/core/request"
)

const modelsUsage = `Usage:
  atelier models [--json]            list the models in your model folders, by kind
  atelier models add-folder DIR      scan DIR (and its subfolders) for models
  atelier models remove-folder DIR   stop scanning DIR
  atelier models download [base|refiner|vae|OWNER/NAME] [--dest DIR]
                                     download a model from the Hugging Face hub

Diffusers folders are recognised by the _class_name of model_index.json or
config.json; single .safetensors files by the tensor names in their header
(nothing is loaded). Pickle files (.ckpt .pt .pth .bin .pkl) are listed as
refused: they can run code when loaded. The tiny demo parts (tiny,
tiny-single-file, tiny-lora, tiny-controlnet, tiny-refiner, tiny-vae,
tiny-upscaler) and the lanczos upscaler are always available.
`

// tinyEntries are the generated demo parts, always available.
var tinyEntries = []library.LibraryEntry{
	{Path: request.TinyModel, Name: request.TinyModel, Kind: library.KindCheckpoint, Format: "tiny"},
	{Path: request.TinyRefiner, Name: request.TinyRefiner, Kind: library.KindRefiner, Format: "tiny"},
	{Path: request.TinyLoRA, Name: request.TinyLoRA, Kind: library.KindLoRA, Format: "tiny"},
	{Path: request.TinyControlNet, Name: request.TinyControlNet, Kind: library.KindControlNet, Format: "tiny"},
	{Path: request.TinyVAE, Name: request.TinyVAE, Kind: library.KindVAE, Format: "tiny"},
	{Path: request.LanczosUpscaler, Name: request.LanczosUpscaler, Kind: library.KindUpscaler, Format: "built-in"},
	{Path: request.TinyUpscaler, Name: request.TinyUpscaler, Kind: library.KindUpscaler, Format: "tiny"},
	{Path: request.TinySingleFile, Name: request.TinySingleFile, Kind: library.KindCheckpoint, Format: "tiny"},
}

func cmdModels(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "download" {
		return cmdModelsDownload(args[1:], stdout, stderr)
	}
	if len(args) > 0 && (args[0] == "add-folder" || args[0] == "remove-folder") {
		return cmdModelsFolder(args[0], args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("models", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the folders and models as one JSON object")
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, modelsUsage)
			return exitOK
		}
		fmt.Fprintf(stderr, "atelier models: %v\n%s", err, modelsUsage)
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "atelier models: unknown argument %q\n%s", fs.Arg(0), modelsUsage)
		return exitUsage
	}
	store, dirs, ok := openStore(stderr, "models")
	if !ok {
		return exitFailure
	}
	defer store.Close()
	folders, err := library.LibraryFolders(context.Background(), store)
	if err != nil {
		fmt.Fprintln(stderr, "atelier models:", err)
		return exitFailure
	}
	folders = library.ScanFolders(dirs.Models, folders)
	lib := library.ScanLibrary(folders)
	lib.Entries = append(append([]library.LibraryEntry(nil), tinyEntries...), lib.Entries...)
	if *asJSON {
		b, err := json.MarshalIndent(lib, "", "  ")
		if err != nil {
			fmt.Fprintln(stderr, "atelier models:", err)
			return exitFailure
		}
		fmt.Fprintln(stdout, string(b))
		return exitOK
	}
	fmt.Fprintln(stdout, "Folders:")
	for i, f := range folders {
		if i == 0 {
			f += " (Atelier's models folder: always scanned; downloads go here)"
		}
		fmt.Fprintln(stdout, "  "+f)
	}
	if len(folders) == 1 {
		fmt.Fprintln(stdout, "No folders of your own yet: add one with \"atelier models add-folder DIR\".")
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	for _, kind := range library.ModelKinds {
		var rows []library.LibraryEntry
		for _, e := range lib.Entries {
			if e.Kind == kind {
				rows = append(rows, e)
			}
		}
		if len(rows) == 0 {
			continue
		}
		fmt.Fprintf(tw, "\n%s:\n", kindTitle(kind))
		for _, e := range rows {
			status := e.Format
			if e.Refused != "" {
				status = "REFUSED: " + e.Refused
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", e.Name, status, e.Path)
		}
	}
	tw.Flush()
	if home, err := os.UserHomeDir(); err == nil {
		var more []string
		for _, f := range library.FindModelFolders(home) {
			if !slices.Contains(folders, f) {
				more = append(more, f)
			}
		}
		if len(more) > 0 {
			fmt.Fprintln(stdout, "\nModel folders of other apps on this machine, not in the library (add with \"atelier models add-folder DIR\"):")
			for _, f := range more {
				fmt.Fprintln(stdout, "  "+f)
			}
		}
	}
	for _, p := range lib.Problems {
		fmt.Fprintln(stderr, "atelier models: could not read:", p)
	}
	return exitOK
}

func kindTitle(k library.ModelKind) string {
	switch k {
	case library.KindCheckpoint:
		return "Checkpoints"
	case library.KindRefiner:
		return "Refiners"
	case library.KindLoRA:
		return "LoRAs"
	case library.KindControlNet:
		return "ControlNets"
	case library.KindVAE:
		return "VAEs"
	case library.KindUpscaler:
		return "Upscalers"
	}
	return "Not recognised"
}

func cmdModelsFolder(sub string, args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintf(stderr, "atelier models %s: give one folder\n%s", sub, modelsUsage)
		return exitUsage
	}
	store, _, ok := openStore(stderr, "models "+sub)
	if !ok {
		return exitFailure
	}
	defer store.Close()
	ctx := context.Background()
	if sub == "remove-folder" {
		removed, err := library.RemoveLibraryFolder(ctx, store, args[0])
		switch {
		case err != nil:
			fmt.Fprintln(stderr, "atelier models remove-folder:", err)
			return exitFailure
		case !removed:
			fmt.Fprintf(stderr, "atelier models remove-folder: %s is not one of the model folders\n", args[0])
			return exitUsage
		}
		fmt.Fprintf(stdout, "removed %s\n", args[0])
		return exitOK
	}
	dir, err := library.AddLibraryFolder(ctx, store, args[0])
	if err != nil {
		fmt.Fprintln(stderr, "atelier models add-folder:", err)
		return exitUsage
	}
	lib := library.ScanLibrary([]string{dir})
	usable := 0
	for _, e := range lib.Entries {
		if e.Refused == "" {
			usable++
		}
	}
	fmt.Fprintf(stdout, "added %s: %d models found (%d refused)\n", dir, usable, len(lib.Entries)-usable)
	return exitOK
}
