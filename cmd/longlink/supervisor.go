package main

import (
	"log/slog"
	"time"

	"github.com/longlink/longlink/gateway"
)

func runSupervisor(log *slog.Logger, workers int, admin, dataDir string, shutdownTimeout time.Duration, args []string) int {
	return gateway.RunSupervisor(gateway.SupervisorConfig{
		Workers: workers, Admin: admin, DataDir: dataDir, Args: args,
		ShutdownTimeout: shutdownTimeout, Logger: log,
	})
}
