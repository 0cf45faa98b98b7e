package loadtest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Metric names read from the gateway's admin /metrics. The supervisor of a
// multi-worker gateway sums them over its workers.
const (
	metricRSS   = "process_resident_memory_bytes"
	metricCPU   = "process_cpu_seconds_total"
	metricConns = "longlink_connections"
	// metricAnon is anonymous RSS (heap, stacks): RSS without the
	// executable's file pages, which every worker maps and touches as it
	// runs more code.
	metricAnon = "longlink_process_rss_anon_bytes"
)

// serverUsage is one sample of the target server's resources.
type serverUsage struct {
	OK    bool
	CPU   float64 // seconds, cumulative
	RSS   int64   // bytes
	Anon  int64   // anonymous resident bytes (0 when the server does not export it)
	Conns int64   // connections the server reports holding (-1 unknown)
}

// scrapeMetrics fetches http://admin/metrics and sums every sample of each
// metric name (labels are ignored, so per-worker series add up).
func scrapeMetrics(ctx context.Context, client *http.Client, admin string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	// Uncompressed: a gzip writer per read (promhttp's, ~1 MB of flate state
	// after each GC empties its pool) was most of what the tool's 1 Hz reads
	// cost the gateway in CPU and garbage, which then showed in its figures.
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("admin /metrics: %s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

// parseMetrics reads the Prometheus text format.
func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		name := line
		rest := ""
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name = line[:i]
			rest = line[i:]
		}
		if strings.HasPrefix(rest, "{") {
			j := strings.LastIndexByte(rest, '}')
			if j < 0 {
				continue
			}
			rest = rest[j+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		out[name] += v
	}
	return out, sc.Err()
}

func usageFromMetrics(m map[string]float64) serverUsage {
	u := serverUsage{OK: true, Conns: -1}
	u.CPU = m[metricCPU]
	u.RSS = int64(m[metricRSS])
	u.Anon = int64(m[metricAnon])
	if v, ok := m[metricConns]; ok {
		u.Conns = int64(v)
	}
	if _, ok := m[metricRSS]; !ok {
		u.OK = false
	}
	return u
}
