// Package apispec holds the OpenAPI 3 description of the enqueuer's HTTP API
// (openapi.yaml beside this file), so that producers in any language can generate
// a client from it. Spec is the file's bytes, embedded at build time; the tests
// of internal/api load it and check real requests and responses against it, so
// the description cannot drift from the handlers unnoticed. Spec must not be
// modified.
package apispec

import _ "embed"

// Spec is the OpenAPI 3.0 document, in YAML.
//
//go:embed openapi.yaml
var Spec []byte
