package ui

import (
	"fmt"
	"strconv"
	"strings"

	"atelier/core/request"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/widget"
)

// batchSection is how many images one job makes (the batch size) and how
// many jobs one Generate runs (the batch count).
type batchSection struct {
	fields     *formFields
	batchSize  *widget.Select
	batchCount *submitEntry
}

func newBatchSection(ff *formFields) *batchSection {
	s := &batchSection{fields: ff}
	sizes := make([]string, 0, request.MaxBatch)
	for i := request.MinBatch; i <= request.MaxBatch; i++ {
		sizes = append(sizes, strconv.Itoa(i))
	}
	s.batchSize = widget.NewSelect(sizes, func(string) { ff.clearError(fBatch); ff.edited() })
	s.batchCount = ff.entry(fBatchCount, false)
	s.batchCount.SetPlaceHolder("1")
	return s
}

func (s *batchSection) owns(field string) bool { return field == fBatch || field == fBatchCount }

// setSize shows a request's batch size; the batch count is the form's own.
func (s *batchSection) setSize(r request.Request) {
	s.batchSize.SetSelected(strconv.Itoa(max(r.BatchSize, request.MinBatch)))
}

func (s *batchSection) set(request.Request) {
	if strings.TrimSpace(s.batchCount.Text) == "" {
		s.batchCount.SetText("1")
	}
}

// read takes the batch size and checks the count (which is not part of a
// request: Generate runs count jobs of it).
func (s *batchSection) read(r *request.Request, errs *[]*request.FieldError) {
	r.BatchSize, _ = strconv.Atoi(s.batchSize.Selected)
	if _, fe := s.count(); fe != nil {
		*errs = append(*errs, fe)
	}
}

// count is the number of jobs one Generate runs, or an error naming the field.
func (s *batchSection) count() (int, *request.FieldError) {
	t := strings.TrimSpace(s.batchCount.Text)
	if t == "" {
		return 1, nil
	}
	n, err := strconv.Atoi(t)
	if err != nil || n < request.MinBatchCount || n > request.MaxBatchCount {
		return 1, &request.FieldError{Field: fBatchCount,
			Message: fmt.Sprintf("must be a whole number from %d to %d, got %q", request.MinBatchCount, request.MaxBatchCount, t)}
	}
	return n, nil
}

func (s *batchSection) content() fyne.CanvasObject {
	errs := s.fields.errs
	return container.NewVBox(
		container.NewGridWithColumns(2,
			container.NewVBox(caption("Batch size (images per job)"), s.batchSize),
			container.NewVBox(caption("Batch count (jobs)"), s.batchCount)),
		errs[fBatch], errs[fBatchCount])
}
