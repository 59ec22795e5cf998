// Package failure is the vocabulary of a job that fails: the closed set of
// error codes of the protocol, and JobError, the failure as the user sees it.
// The request checks, the bridge and the runners all speak it.
package failure

import (
	"fmt"

	"atelier/core/spec"
)

// ErrorCode is the closed set of job error codes, as the protocol spec lists
// them (spec.ErrorCode).
type ErrorCode = spec.ErrorCode

// The error codes, in documentation order.
const (
	ErrInvalidRequest = spec.ErrInvalidRequest
	ErrModelNotFound  = spec.ErrModelNotFound
	ErrUnsupported    = spec.ErrUnsupported
	ErrOutOfMemory    = spec.ErrOutOfMemory
	ErrDiskFull       = spec.ErrDiskFull
	ErrCancelled      = spec.ErrCancelled
	ErrWorkerCrashed  = spec.ErrWorkerCrashed
	ErrInternal       = spec.ErrInternal
)

// ErrorCodes lists every valid code, in documentation order.
var ErrorCodes = spec.ErrorCodes

// JobError is a job failure as the user sees it: a code from the closed set, a
// message saying what happened and what to do, and technical detail. Op and
// Err are for the program: the step that failed, and the error behind it
// (errors.Is and errors.As see through a JobError to Err).
type JobError struct {
	Op      string
	Code    ErrorCode
	Message string
	Detail  string
	Field   string
	Err     error
}

func (e *JobError) Error() string {
	s := fmt.Sprintf("%s: %s", e.Code, e.Message)
	if e.Field != "" {
		s = fmt.Sprintf("%s (field %s)", s, e.Field)
	}
	return s
}

func (e *JobError) Unwrap() error { return e.Err }
