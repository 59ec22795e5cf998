// Package core is Atelier's domain, in one package per reason to change. It
// never imports Fyne.
//
//   - spec: the protocol's shared constants, generated from docs/protocol/spec.json
//   - request: a generation job's fields, its validation, and Prepare
//   - failure: the error codes and JobError, a failure as the user sees it
//   - protocol: the worker's messages and their strict codec
//   - store: the SQLite history (jobs, queue, gallery, sessions, settings)
//   - jobs: Runner, QueueRunner and the queue's time estimates
//   - library: the models on disk and the folders they are found in
//   - media: PNG text chunks, thumbnails, atomic writes
//   - safetensors: a .safetensors file's tensor names, read from its header alone
//   - infotext: AUTOMATIC1111's parameters text, and importing it from a PNG
//   - paths: the folders Atelier reads and writes
package core
