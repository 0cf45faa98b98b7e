package web

import (
	"testing"

	"github.com/longlink/longlink/gateway"
)

// pushParam tells the page whether to wait for a push; triggerPush sends it.
// Filled in once the gateway's push path lands (issue 5).
const pushParam = "0"

func triggerPush(t *testing.T, gw *gateway.Server, uid uint64) {}

func checkPush(t *testing.T, s stage) {}
