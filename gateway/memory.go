package gateway

import (
	"os"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// A gateway's heap is mostly long-lived connection state; a connection ramp
// leaves freed garbage behind in pages the Go runtime keeps for later. Once
// the heap has been quiet for a while, returnMemory gives those pages back,
// so RSS tracks the live connections rather than the peak of the ramp.
func (s *Server) returnMemory(every time.Duration, minFree uint64) {
	sample := []rtmetrics.Sample{{Name: "/memory/classes/heap/free:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			rtmetrics.Read(sample)
			// free: whole pages the runtime keeps; unused: slack inside spans,
			// most of it garbage a collection would free.
			if sample[0].Value.Uint64()+sample[1].Value.Uint64() > minFree {
				debug.FreeOSMemory()
			}
		case <-s.done:
			return
		}
	}
}

// rssAnon reads this process's anonymous resident memory (heap, stacks): the
// memory it really adds, unlike RSS, which also counts the executable's pages
// that all worker processes share.
func rssAnon() float64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(l, "RssAnon:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, _ := strconv.ParseFloat(f[0], 64)
				return kb * 1024
			}
		}
	}
	return 0
}

func rssAnonCollector() prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "longlink_process_rss_anon_bytes",
		Help: "Anonymous resident memory of the process (RSS without the shared executable pages); summed over workers it is what the gateway really uses.",
	}, rssAnon)
}
