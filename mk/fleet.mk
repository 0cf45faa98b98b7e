# The fleet on the multi-host test bed (issue 14, docs/fleet.md "Test bed").
# `make fleet-test` runs the fleet e2e tests (they also run in `make test`);
# `make fleet-scale` is the 30,000-client host-kill run of the load tool,
# under the load lock (about 2 minutes; not in CI).
FLEET_CONNS ?= 30000

fleet-test: ## the fleet e2e tests on the network-namespace bed (internal/fleete2e)
	$(GO) test -count=1 -v -timeout 10m ./internal/testbed/ ./internal/fleete2e/

fleet-scale: ## FLEET_CONNS (30,000) load-tool clients over 3 bed hosts, one killed: reconnect p50/p99/max
	flock /tmp/longlink-load.lock env LONGLINK_FLEET_CONNS=$(FLEET_CONNS) \
	  $(GO) test -count=1 -v -timeout 10m -run 'TestFleetLoadToolHostKill' ./internal/fleete2e/
