package ui

import (
	"fyne.io/fyne/v2"

	"atelier/core/request"
)

// formSection is one group of the form's fields: it shows a request's
// values, reads them back into a request (text that is not a number is
// reported against its field), and lays itself out. Each lives in a
// section_*.go file of its own.
type formSection interface {
	set(r request.Request)
	read(r *request.Request, errs *[]*request.FieldError)
	content() fyne.CanvasObject
}

// foldedSection is a section of the form's accordion: it says which fields
// are its own, so that an error shown there opens it.
type foldedSection interface {
	formSection
	owns(field string) bool
}
