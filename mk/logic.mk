# The logic cluster (issue 15): `make test` runs TestClusterE2E's short form
# (3 NATS node processes, 3 logic instances, a gateway with 2 workers, one
# kill -9 each of a store node, a logic instance and a worker; ~30 s).
# `make test-cluster-long` runs it with 12 senders and 8 s of load around
# each fault (~1-2 min); docs/logic.md has the figures.
test-cluster-long: ## the logic cluster's fault e2e, long form (LONGLINK_CLUSTER_E2E=long)
	LONGLINK_CLUSTER_E2E=long $(GO) test -count=1 -run '^TestClusterE2E$$' -v -timeout 10m ./backend/logic/

.PHONY: test-cluster-long
