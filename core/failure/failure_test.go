package failure

import (
	"errors"
	"io/fs"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestJobErrorWrapsItsCause(t *testing.T) {
	e := &JobError{Op: "resolve init_image", Code: ErrInvalidRequest, Field: "init_image",
		Message: "/x.png does not exist", Err: fs.ErrNotExist}
	assert.Equal(t, "invalid_request: /x.png does not exist (field init_image)", e.Error(), "Op and Err stay out of the text")
	assert.ErrorIs(t, e, fs.ErrNotExist)
	var got *JobError
	assert.True(t, errors.As(error(e), &got))
	assert.Equal(t, "resolve init_image", got.Op)
	assert.NoError(t, (&JobError{Code: ErrInternal, Message: "m"}).Unwrap())
}
