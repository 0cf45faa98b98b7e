// Package web holds longlink's browser client: longlink.js, a dependency-free
// ES module speaking the protocol over WebSocket, and example.html. They are
// embedded here so Go programs (and the browser test) can serve them.
package web

import "embed"

// Files holds longlink.js and example.html.
//
//go:embed longlink.js example.html
var Files embed.FS
