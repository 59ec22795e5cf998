// Package core holds Atelier's domain: requests and their validation, the worker
// protocol's types, paths, the SQLite history and the job runner. It never imports Fyne.
package core
