package supervisor

import (
	"net"
	"net/http"
	"path/filepath"
	"testing"
)

// The supervisor's scrapes of worker admin sockets must not ask for gzip:
// promhttp would then compress every 1 Hz /metrics page in every worker.
func TestWorkerClientAsksUncompressed(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "w0.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("Accept-Encoding")
		w.Write([]byte("ok"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	resp, err := workerClient(sock).Get("http://worker/metrics") // the client's 3 s timeout bounds it
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if enc := <-got; enc != "" {
		t.Fatalf("worker scrape sent Accept-Encoding %q, want none", enc)
	}
}
