package spec

import "slices"

// ErrorCode is an error message's code, one of ErrorCodes.
type ErrorCode string

// Valid reports whether c is in the closed set.
func (c ErrorCode) Valid() bool { return slices.Contains(ErrorCodes, c) }
