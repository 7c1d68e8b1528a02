package oci

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"
)

func TestCodeStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		code Code
		want int
	}{
		{CodeBlobUnknown, http.StatusNotFound},
		{CodeBlobUploadInvalid, http.StatusBadRequest},
		{CodeBlobUploadUnknown, http.StatusNotFound},
		{CodeDigestInvalid, http.StatusBadRequest},
		{CodeManifestBlobUnknown, http.StatusBadRequest},
		{CodeManifestInvalid, http.StatusBadRequest},
		{CodeManifestUnknown, http.StatusNotFound},
		{CodeNameInvalid, http.StatusBadRequest},
		{CodeNameUnknown, http.StatusNotFound},
		{CodeSizeInvalid, http.StatusBadRequest},
		{CodeUnauthorized, http.StatusUnauthorized},
		{CodeDenied, http.StatusForbidden},
		{CodeUnsupported, http.StatusMethodNotAllowed},
		{CodeTooManyRequests, http.StatusTooManyRequests},
		{CodeRangeInvalid, http.StatusRequestedRangeNotSatisfiable},
		{CodeUnavailable, http.StatusServiceUnavailable},
		{CodeUnknown, http.StatusInternalServerError},
		{Code("NOT_A_CODE"), http.StatusInternalServerError},
		{Code(""), http.StatusInternalServerError},
	}
	if got, want := len(status), len(tests)-2; got != want {
		t.Errorf("status map has %d codes, table pins %d: add the new code here", got, want)
	}
	for _, tt := range tests {
		t.Run(string(tt.code), func(t *testing.T) {
			t.Parallel()
			if got := tt.code.Status(); got != tt.want {
				t.Errorf("%s.Status() = %d, want %d", tt.code, got, tt.want)
			}
			e := &Error{Code: tt.code}
			if got := e.Status(); got != tt.want {
				t.Errorf("(&Error{%s}).Status() = %d, want %d", tt.code, got, tt.want)
			}
		})
	}
}

func TestErrorWithStatus(t *testing.T) {
	t.Parallel()
	e := Errorf(CodeBlobUploadInvalid, "chunk %d", 3)
	w := e.WithStatus(http.StatusRequestedRangeNotSatisfiable)
	if w.Status() != http.StatusRequestedRangeNotSatisfiable || w.Code != CodeBlobUploadInvalid || w.Message != "chunk 3" {
		t.Errorf("WithStatus = %+v", w)
	}
	if e.Status() != http.StatusBadRequest || e.HTTPStatus != 0 {
		t.Errorf("WithStatus modified the original: %+v", e)
	}
	if got, want := e.Error(), "BLOB_UPLOAD_INVALID: chunk 3"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestErrorIs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		err    error
		target error
		want   bool
	}{
		{"same code", Errorf(CodeBlobUnknown, "blob x"), ErrBlobUnknown, true},
		{"wrapped", fmt.Errorf("ctx: %w", Errorf(CodeManifestUnknown, "m")), ErrManifestUnknown, true},
		{"other code", Errorf(CodeBlobUnknown, "blob x"), ErrManifestUnknown, false},
		{"target with message", Errorf(CodeBlobUnknown, "a"), Errorf(CodeBlobUnknown, "b"), false},
		{"plain error", errors.New("BLOB_UNKNOWN"), ErrBlobUnknown, false},
		{"sentinel itself", ErrUploadUnknown, ErrUploadUnknown, true},
		{"digest", Errorf(CodeDigestInvalid, "bad"), ErrDigestInvalid, true},
		{"name", Errorf(CodeNameUnknown, "n"), ErrNameUnknown, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := errors.Is(tt.err, tt.target); got != tt.want {
				t.Errorf("errors.Is(%v, %v) = %v, want %v", tt.err, tt.target, got, tt.want)
			}
		})
	}
}

func TestBody(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		errs []*Error
		want string
	}{
		{"one", []*Error{Errorf(CodeBlobUnknown, "blob unknown")},
			`{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}`},
		{"detail", []*Error{{Code: CodeManifestBlobUnknown, Message: "m", Detail: map[string]string{"digest": "sha256:x"}}},
			`{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"m","detail":{"digest":"sha256:x"}}]}`},
		{"status not serialised", []*Error{{Code: CodeRangeInvalid, Message: "r", HTTPStatus: 416}},
			`{"errors":[{"code":"RANGE_INVALID","message":"r"}]}`},
		{"two", []*Error{Errorf(CodeDenied, "a"), Errorf(CodeUnsupported, "b")},
			`{"errors":[{"code":"DENIED","message":"a"},{"code":"UNSUPPORTED","message":"b"}]}`},
		{"empty message kept", []*Error{{Code: CodeUnknown}},
			`{"errors":[{"code":"UNKNOWN","message":""}]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := Body(tt.errs...)
			if string(got) != tt.want {
				t.Errorf("Body = %s\nwant   %s", got, tt.want)
			}
			var parsed struct {
				Errors []struct {
					Code    string          `json:"code"`
					Message string          `json:"message"`
					Detail  json.RawMessage `json:"detail"`
				} `json:"errors"`
			}
			if err := json.Unmarshal(got, &parsed); err != nil {
				t.Fatalf("Body is not JSON: %v", err)
			}
			if len(parsed.Errors) != len(tt.errs) {
				t.Fatalf("Body has %d errors, want %d", len(parsed.Errors), len(tt.errs))
			}
			for i, e := range tt.errs {
				if parsed.Errors[i].Code != string(e.Code) || parsed.Errors[i].Message != e.Message {
					t.Errorf("error %d = %+v, want %s %q", i, parsed.Errors[i], e.Code, e.Message)
				}
			}
		})
	}
}
