package main

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/longlink/longlink/push"
	"github.com/longlink/longlink/supervisor"
)

func runSupervisor(log *slog.Logger, workers int, admin, dataDir, runDir string, shutdownTimeout time.Duration, adminToken string, args []string, hub *push.Hub, more ...prometheus.Collector) int {
	var extra prometheus.Gatherer
	if hub != nil || len(more) > 0 { // the push router, the embedded NATS server and the embedded logic run here, in the supervisor
		reg := prometheus.NewRegistry()
		reg.MustRegister(supervisor.ProcessCollector())
		if hub != nil {
			for _, c := range hub.Router().Collectors() {
				reg.MustRegister(c)
			}
		}
		reg.MustRegister(more...)
		extra = reg
	}
	sc := supervisor.Config{
		Workers: workers, Admin: admin, DataDir: dataDir, Args: args,
		ShutdownTimeout: shutdownTimeout, Logger: log, Extra: extra, AdminToken: adminToken, RunDir: runDir,
		Links: ledgerLinks,
	}
	if hub != nil {
		sc.Ready = hub.Ready
	}
	return supervisor.Run(sc)
}
