package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/longlink/longlink/auth"
	"github.com/longlink/longlink/codec"
)

// HTTPConfig configures short-connection access: client requests over
// plain HTTP/1.1, or HTTP/2 with TLS when a certificate is given. It shares
// the forwarding queue, pool, admission and metrics with the long
// connections; it carries no pushes.
type HTTPConfig struct {
	Addr              string        // e.g. ":7180"
	TLSCert, TLSKey   string        // both set: HTTPS with HTTP/2
	ReadHeaderTimeout time.Duration // default 5s: slowloris bound
	ReadTimeout       time.Duration // default 10s
	IdleTimeout       time.Duration // default 60s
	MaxHeaderBytes    int           // request line and headers, at most (default 8 KiB); more is 431
	// Example, when set, is served read-only under GET /example/ (the
	// browser client and its demo page, web.Files), and / redirects there.
	Example fs.FS
}

// httpError is the JSON body of every non-200 answer.
type httpError struct {
	Code    codec.Code `json:"code"`
	Message string     `json:"message"`
}

// ServeHTTP starts the short-connection listener and returns its address.
// With reusePort several worker processes can share it.
func (s *Server) ServeHTTP(cfg HTTPConfig, reusePort bool) (string, error) {
	if cfg.ReadHeaderTimeout <= 0 {
		cfg.ReadHeaderTimeout = 5 * time.Second
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = 8 << 10
	}
	lc := net.ListenConfig{}
	if reusePort {
		lc.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	ln, err := lc.Listen(context.Background(), "tcp", cfg.Addr)
	if err != nil {
		return "", fmt.Errorf("gateway: http listen %s: %w", cfg.Addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/call/{method...}", s.httpCall) // "..." so empty and odd names get the JSON 400
	mux.HandleFunc("GET /v1/nodes", s.handleNodes)          // the fleet's signed node list (fleet.go)
	if cfg.Example != nil {
		files := http.StripPrefix("/example/", http.FileServerFS(cfg.Example))
		mux.HandleFunc("GET /example/{file...}", func(w http.ResponseWriter, r *http.Request) {
			if r.PathValue("file") == "" {
				r.URL.Path = "/example/example.html" // no directory listing
			}
			w.Header().Set("Cache-Control", "no-cache")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			files.ServeHTTP(w, r)
		})
		mux.Handle("GET /{$}", http.RedirectHandler("/example/", http.StatusFound))
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      s.cfg.CallTimeout + 5*time.Second,
		IdleTimeout:       cfg.IdleTimeout,
		// net/http answers 431 itself only past MaxHeaderBytes + 4096
		// ("bufio slop"), and HTTP/2 counts differently: httpCall applies
		// the documented limit exactly, to both.
		MaxHeaderBytes: cfg.MaxHeaderBytes,
		ErrorLog:       nil,
	}
	s.httpSrv = srv
	s.httpMaxHeader = cfg.MaxHeaderBytes
	go func() {
		var err error
		if cfg.TLSCert != "" && cfg.TLSKey != "" {
			err = srv.ServeTLS(ln, cfg.TLSCert, cfg.TLSKey) // negotiates HTTP/2 by ALPN
		} else {
			err = srv.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("http listener stopped", "err", err)
		}
	}()
	return ln.Addr().String(), nil
}

// httpCall serves POST /v1/call/{method}: a bearer token (the same tokens as
// AUTH), the body passed to the backend as is, the backend's answer as the
// body. Logical failures map to 4xx, busy and system failures to 503 (or 504
// for timeouts) with Retry-After.
func (s *Server) httpCall(w http.ResponseWriter, r *http.Request) {
	if headerBytes(r) > s.httpMaxHeader {
		s.httpFail(w, http.StatusRequestHeaderFieldsTooLarge, codec.CodeBadRequest, "request line and headers over 8 KiB", 0)
		return
	}
	// A declared body over the limit is refused before anything is read, so
	// a huge Content-Length with no body behind it is answered at once.
	if r.ContentLength > int64(s.cfg.MaxBody) {
		s.httpFail(w, http.StatusRequestEntityTooLarge, codec.CodeBodyTooLarge, "body over the size limit", 0)
		return
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		s.httpFail(w, http.StatusUnauthorized, codec.CodeBadToken, "missing bearer token", 0)
		return
	}
	claims, err := s.tokenKeys().Verify(strings.TrimSpace(tok), time.Now())
	if err != nil {
		// One message for every invalid token: which check failed (unknown
		// key id, bad signature, malformed) is not the caller's business.
		code, msg := codec.CodeBadToken, "invalid token"
		if errors.Is(err, auth.ErrExpired) {
			code, msg = codec.CodeTokenExpired, "token expired"
		}
		s.metrics.auths.WithLabelValues("http_" + code.String()).Inc()
		s.httpFail(w, http.StatusUnauthorized, code, msg, 0)
		return
	}
	// The device rules are AUTH's: a token bound to a device is valid only
	// for that device (the header empty or equal).
	device, hdr := claims.Device, r.Header.Get("X-Longlink-Device")
	if device == "" {
		device = hdr
	} else if hdr != "" && hdr != device {
		s.metrics.auths.WithLabelValues("http_device_mismatch").Inc()
		s.httpFail(w, http.StatusUnauthorized, codec.CodeBadToken, "invalid token", 0)
		return
	}
	if len(device) > auth.MaxDevice {
		s.httpFail(w, http.StatusBadRequest, codec.CodeBadRequest, "device id over 64 bytes", 0)
		return
	}
	method := r.PathValue("method")
	if !validMethod([]byte(method)) {
		s.httpFail(w, http.StatusBadRequest, codec.CodeBadRequest, "bad method: empty, over 128 bytes or not UTF-8", 0)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(s.cfg.MaxBody)))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.httpFail(w, http.StatusRequestEntityTooLarge, codec.CodeBodyTooLarge, "body over the size limit", 0)
			return
		}
		s.httpFail(w, http.StatusBadRequest, codec.CodeBadRequest, "reading body: "+err.Error(), 0)
		return
	}
	res := s.fwd.call(r.Context(), claims.UID, device, method, body)
	if res.code == codec.OK {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("X-Longlink-Code", "0")
		s.metrics.httpCalls.WithLabelValues("200").Inc()
		_, _ = w.Write(res.body)
		return
	}
	s.httpFail(w, httpStatus(res.code), res.code, res.msg, res.retryAfter)
}

// headerBytes is the size of r's request line and headers as HTTP/1.1
// writes them.
func headerBytes(r *http.Request) int {
	n := len(r.Method) + 1 + len(r.RequestURI) + 1 + len("HTTP/1.1\r\n") + len("Host: \r\n") + len(r.Host) + 2
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + 2 + len(v) + 2
		}
	}
	return n
}

// httpStatus maps a longlink code to an HTTP status.
func httpStatus(c codec.Code) int {
	switch {
	case c == codec.CodeUnknownMethod:
		return http.StatusNotFound
	case c == codec.CodeBadRequest:
		return http.StatusBadRequest
	case c == codec.CodeBodyTooLarge:
		return http.StatusRequestEntityTooLarge
	case c >= 1000 && c < 2000:
		return http.StatusUnprocessableEntity
	case c == codec.CodeTimeout:
		return http.StatusGatewayTimeout
	case c == codec.CodeTooManyCall:
		return http.StatusTooManyRequests
	}
	return http.StatusServiceUnavailable
}

func (s *Server) httpFail(w http.ResponseWriter, status int, code codec.Code, msg string, retryAfterMS uint32) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Longlink-Code", strconv.Itoa(int(code)))
	if code.Retryable() || status == http.StatusServiceUnavailable {
		h.Set("Retry-After", strconv.Itoa(int(max((retryAfterMS+999)/1000, 1))))
	}
	if status == http.StatusUnauthorized {
		h.Set("WWW-Authenticate", `Bearer error="invalid_token"`)
	}
	s.metrics.httpCalls.WithLabelValues(strconv.Itoa(status)).Inc()
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(httpError{Code: code, Message: msg})
}
