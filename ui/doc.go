// Package ui is Atelier's Fyne studio window: the request form, live
// progress, the result viewer, the recent-images strip, and the queue and
// gallery tabs. Each view names the few store methods it needs in an
// interface of its own; the worker's stream reaches the views as the small
// events of events.go.
package ui
