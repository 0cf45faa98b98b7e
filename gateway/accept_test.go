package gateway

import (
	"net/http/httptest"
	"testing"
)

func TestAccepts(t *testing.T) {
	const pb = "application/x-protobuf"
	for _, c := range []struct {
		accept []string
		want   bool
	}{
		{nil, false},
		{[]string{pb}, true},
		{[]string{"Application/X-Protobuf"}, true},
		{[]string{"application/json, application/x-protobuf;q=0.5"}, true},
		{[]string{"application/x-protobuf;q=0"}, false},
		{[]string{"application/x-protobuf; q=0.000"}, false},
		{[]string{"application/x-protobuf;q=bad"}, false},
		{[]string{"application/x-protobuf-extra"}, false},
		{[]string{"*/*"}, false},
		{[]string{"text/html", pb}, true},
		{[]string{";;;,"}, false},
	} {
		r := httptest.NewRequest("GET", "/v1/nodes", nil)
		for _, a := range c.accept {
			r.Header.Add("Accept", a)
		}
		if got := accepts(r, pb); got != c.want {
			t.Errorf("Accept %q: accepts = %v, want %v", c.accept, got, c.want)
		}
	}
}
