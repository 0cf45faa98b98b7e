package gateway

import (
	"mime"
	"net/http"
	"strconv"
	"strings"
)

// accepts reports whether r's Accept header names mediaType (exactly, not
// through a wildcard) with a quality above zero: "type;q=0" is a refusal
// (RFC 9110 §12.5.1), not a request for it.
func accepts(r *http.Request, mediaType string) bool {
	for _, line := range r.Header.Values("Accept") {
		for _, part := range strings.Split(line, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil || !strings.EqualFold(mt, mediaType) {
				continue
			}
			if q, ok := params["q"]; ok {
				if f, err := strconv.ParseFloat(q, 64); err != nil || f <= 0 {
					continue
				}
			}
			return true
		}
	}
	return false
}
