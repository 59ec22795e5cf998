// Package python carries the worker's code and its pinned requirements inside
// the Go binary, so that an installed Atelier needs no clone: core/setup
// unpacks them into the user's data folder on first start.
package python

import (
	"embed"
	"io/fs"
)

// The patterns name files, not folders: a folder pattern would leave out
// __init__.py and __main__.py (embed skips names starting with _), and all:
// would take in __pycache__. TestEmbeddedWorkerHasEveryFile catches a new
// file kind or subfolder these patterns miss.
//
//go:embed requirements.txt atelier_worker/*.py atelier_worker/engine/*.py atelier_worker/configs/*
var files embed.FS

// Files is the worker's package (atelier_worker/...) and requirements.txt.
func Files() fs.FS { return files }
