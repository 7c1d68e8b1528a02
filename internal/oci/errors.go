// Package oci holds the OCI Distribution vocabulary shared by berth's packages:
// error codes with their HTTP statuses, media types, and the parsers for
// repository names, references, digests and byte ranges.
package oci

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Code is an OCI distribution error code, such as BLOB_UNKNOWN.
type Code string

// The error codes of the OCI Distribution Specification v1.1, plus the Docker
// ones clients still understand (UNSUPPORTED, TOOMANYREQUESTS, UNAVAILABLE).
const (
	CodeBlobUnknown         Code = "BLOB_UNKNOWN"
	CodeBlobUploadInvalid   Code = "BLOB_UPLOAD_INVALID"
	CodeBlobUploadUnknown   Code = "BLOB_UPLOAD_UNKNOWN"
	CodeDigestInvalid       Code = "DIGEST_INVALID"
	CodeManifestBlobUnknown Code = "MANIFEST_BLOB_UNKNOWN"
	CodeManifestInvalid     Code = "MANIFEST_INVALID"
	CodeManifestUnknown     Code = "MANIFEST_UNKNOWN"
	CodeNameInvalid         Code = "NAME_INVALID"
	CodeNameUnknown         Code = "NAME_UNKNOWN"
	CodeSizeInvalid         Code = "SIZE_INVALID"
	CodeUnauthorized        Code = "UNAUTHORIZED"
	CodeDenied              Code = "DENIED"
	CodeUnsupported         Code = "UNSUPPORTED"
	CodeTooManyRequests     Code = "TOOMANYREQUESTS"
	CodeRangeInvalid        Code = "RANGE_INVALID"
	CodeUnavailable         Code = "UNAVAILABLE"
	CodeUnknown             Code = "UNKNOWN"
)

// status maps every code to the HTTP status the specification gives it, so a
// handler only ever chooses a code.
var status = map[Code]int{
	CodeBlobUnknown:         http.StatusNotFound,
	CodeBlobUploadInvalid:   http.StatusBadRequest,
	CodeBlobUploadUnknown:   http.StatusNotFound,
	CodeDigestInvalid:       http.StatusBadRequest,
	CodeManifestBlobUnknown: http.StatusBadRequest,
	CodeManifestInvalid:     http.StatusBadRequest,
	CodeManifestUnknown:     http.StatusNotFound,
	CodeNameInvalid:         http.StatusBadRequest,
	CodeNameUnknown:         http.StatusNotFound,
	CodeSizeInvalid:         http.StatusBadRequest,
	CodeUnauthorized:        http.StatusUnauthorized,
	CodeDenied:              http.StatusForbidden,
	CodeUnsupported:         http.StatusMethodNotAllowed,
	CodeTooManyRequests:     http.StatusTooManyRequests,
	CodeRangeInvalid:        http.StatusRequestedRangeNotSatisfiable,
	CodeUnavailable:         http.StatusServiceUnavailable,
	CodeUnknown:             http.StatusInternalServerError,
}

// Status is the HTTP status for c.
func (c Code) Status() int {
	if s, ok := status[c]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// Error is an OCI error: a code, a human message and optional detail. It is
// what a handler returns; one place in proxy turns it into a response.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
	// HTTPStatus overrides Code.Status() where the spec asks for another
	// status with the same code (416 for an upload range, for example).
	HTTPStatus int `json:"-"`
	// RetryAfter, when positive, is sent as the Retry-After header (a
	// rate-limited upstream's wait, passed on).
	RetryAfter time.Duration `json:"-"`
	// Upstream names the upstream whose failure this is, when it is one;
	// the mirror has logged its cause, so it is not an internal error.
	Upstream string `json:"-"`
	// Cause is what led to this error (an upstream failure, say), for
	// errors.Is/As and logs; it is never sent to the client.
	Cause error `json:"-"`
}

// Unwrap exposes the cause to errors.Is and errors.As.
func (e *Error) Unwrap() error { return e.Cause }

// Errorf builds an *Error with a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// Status is the HTTP status this error is answered with.
func (e *Error) Status() int {
	if e.HTTPStatus != 0 {
		return e.HTTPStatus
	}
	return e.Code.Status()
}

// WithStatus returns a copy of e answered with the given HTTP status.
func (e *Error) WithStatus(s int) *Error {
	c := *e
	c.HTTPStatus = s
	return &c
}

// Is lets errors.Is match two *Error values by code, so sentinels work.
func (e *Error) Is(target error) bool {
	var t *Error
	return errors.As(target, &t) && t.Code == e.Code && t.Message == "" &&
		(t.HTTPStatus == 0 || t.HTTPStatus == e.Status())
}

// Sentinels for errors.Is: an *Error with the same code matches them.
var (
	ErrBlobUnknown     = &Error{Code: CodeBlobUnknown}
	ErrManifestUnknown = &Error{Code: CodeManifestUnknown}
	ErrNameUnknown     = &Error{Code: CodeNameUnknown}
	ErrUploadUnknown   = &Error{Code: CodeBlobUploadUnknown}
	ErrDigestInvalid   = &Error{Code: CodeDigestInvalid}
	ErrDenied          = &Error{Code: CodeDenied}
	ErrUnsupported     = &Error{Code: CodeUnsupported}
	// ErrUploadOffset is a chunk that does not continue its upload (416).
	ErrUploadOffset = &Error{Code: CodeBlobUploadInvalid, HTTPStatus: http.StatusRequestedRangeNotSatisfiable}
)

// Body is the JSON error body of the specification.
func Body(errs ...*Error) []byte {
	b, _ := json.Marshal(struct {
		Errors []*Error `json:"errors"`
	}{errs})
	return b
}
