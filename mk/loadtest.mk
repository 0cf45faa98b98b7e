# Load testing (issue 3): `make loadtest-1m` holds 1,000,000 connections with
# heartbeats against a local gateway, both ends on this host. docs/loadtest.md
# explains the figures; `make loadtest-check` only checks the host.
LOADTEST_CONNS     ?= 1000000
LOADTEST_WORKERS   ?= 60
LOADTEST_RATE      ?= 10000
LOADTEST_HEARTBEAT ?= 60s
LOADTEST_DURATION  ?= 6m
LOADTEST_SCENARIO  ?= idle
LOADTEST_LISTEN    ?= 127.0.0.1:7100
LOADTEST_ADMIN     ?= 127.0.0.1:7101
LOADTEST_OUT       ?= loadtest-1m
LOADTEST_ARGS      ?=
# Each /metrics read merges every worker's page (~0.2 s of CPU at 60
# workers): read it every 10 s, not every second.
LOADTEST_ADMIN_EVERY ?= 10s
# The gateway alone: the echo backend keeps the reference logic (and its
# presence bookkeeping over gRPC in the supervisor) out of the figures.
LOADTEST_GATEWAY_ARGS ?= --backend echo

loadtest-check: ## check the sysctls and memory a LOADTEST_CONNS run needs (both ends on this host)
	@set -u; n=$(LOADTEST_CONNS); bad=0; \
	get() { cat /proc/sys/$$(echo $$1 | tr . /) 2>/dev/null || echo 0; }; \
	need() { echo "  NEEDS CHANGE: $$1"; echo "      fix: $$2"; bad=1; }; \
	echo "checking this host for $$n loopback connections (gateway and load tool both here: 2 sockets each)"; \
	fm=$$(get fs.file-max); want=$$((2*n + 200000)); \
	if [ "$$fm" -lt "$$want" ]; then need "fs.file-max=$$fm < $$want (two files per connection)" "sysctl -w fs.file-max=$$((want*2))"; else echo "  ok fs.file-max=$$fm"; fi; \
	no=$$(get fs.nr_open); if [ "$$no" -lt 20000 ]; then need "fs.nr_open=$$no < 20000" "sysctl -w fs.nr_open=1048576"; else echo "  ok fs.nr_open=$$no"; fi; \
	lim=$$(ulimit -Hn); if [ "$$lim" != unlimited ] && [ "$$lim" -lt 16000 ]; then need "hard open-file limit $$lim < 16000 per process" "ulimit -Hn 20000 (or lower --per-proc and raise --workers)"; else echo "  ok open files per process: $$lim (load tool uses --per-proc 15000)"; fi; \
	read lo hi < /proc/sys/net/ipv4/ip_local_port_range; ports=$$((hi-lo+1)); per=$$(( (n+78)/79 )); \
	if [ "$$per" -gt $$((ports*95/100)) ]; then need "ip_local_port_range gives $$ports ports; $$per per source address needed over 127.0.0.2-127.0.0.80" "sysctl -w net.ipv4.ip_local_port_range='1024 65535' (or widen --sources)"; else echo "  ok ip_local_port_range $$lo-$$hi: $$ports ports, $$per needed per source address"; fi; \
	sm=$$(get net.core.somaxconn); if [ "$$sm" -lt 4096 ]; then need "net.core.somaxconn=$$sm < 4096 (accept backlog during the ramp)" "sysctl -w net.core.somaxconn=65535"; else echo "  ok net.core.somaxconn=$$sm"; fi; \
	sb=$$(get net.ipv4.tcp_max_syn_backlog); if [ "$$sb" -lt 2048 ]; then need "net.ipv4.tcp_max_syn_backlog=$$sb < 2048" "sysctl -w net.ipv4.tcp_max_syn_backlog=65535"; else echo "  ok net.ipv4.tcp_max_syn_backlog=$$sb"; fi; \
	tm=$$(awk '{print $$3}' /proc/sys/net/ipv4/tcp_mem); wantp=$$((n/4)); \
	if [ "$$tm" -lt "$$wantp" ]; then need "net.ipv4.tcp_mem max=$$tm pages < $$wantp (heartbeat bursts briefly take buffer pages on every socket)" "sysctl -w net.ipv4.tcp_mem='$$wantp $$((wantp*3/2)) $$((wantp*2))'"; else echo "  ok net.ipv4.tcp_mem max=$$tm pages"; fi; \
	if [ -r /proc/sys/net/netfilter/nf_conntrack_max ]; then ct=$$(get net.netfilter.nf_conntrack_max); cc=$$(get net.netfilter.nf_conntrack_count); \
	  if [ "$$cc" -gt 0 ] && [ "$$ct" -lt $$((2*n)) ]; then need "nf_conntrack_max=$$ct < $$((2*n)) and conntrack is tracking ($$cc entries)" "sysctl -w net.netfilter.nf_conntrack_max=$$((4*n)), or drop the rules that need conntrack"; \
	  else echo "  ok conntrack (max $$ct, $$cc tracked now: loopback is not being tracked)"; fi; fi; \
	mf=$$(awk '/^MemFree:/{print $$2}' /proc/meminfo); wantk=$$((n*14)); \
	if [ "$$mf" -lt "$$wantk" ]; then need "MemFree $$((mf/1024)) MiB < $$((wantk/1024)) MiB (about 10 KiB kernel + 4 KiB processes per connection, both ends)" "free memory, or lower LOADTEST_CONNS"; else echo "  ok MemFree $$((mf/1024)) MiB (need about $$((wantk/1024)) MiB)"; fi; \
	if [ $$bad = 1 ]; then echo "host not ready for $$n connections: apply the fixes above (as root) and re-run"; exit 1; fi; echo "host ready"

loadtest-1m: build loadtest-check ## gateway (LOADTEST_WORKERS workers) + load tool: 1,000,000 connections held with heartbeats
	@set -u; gw=""; \
	trap 'if [ -n "$$gw" ]; then kill -TERM $$gw 2>/dev/null; wait $$gw 2>/dev/null; fi' EXIT INT TERM; \
	./$(BIN) gateway --workers $(LOADTEST_WORKERS) --listen $(LOADTEST_LISTEN) --admin $(LOADTEST_ADMIN) --drain 1s --shutdown-timeout 20s --log-level warn $(LOADTEST_GATEWAY_ARGS) & gw=$$!; \
	for i in $$(seq 1 120); do curl -fsS http://$(LOADTEST_ADMIN)/healthz >/dev/null 2>&1 && break; \
	  kill -0 $$gw 2>/dev/null || { echo "gateway exited"; exit 1; }; sleep 0.5; done; \
	./$(BIN) loadtest --target $(LOADTEST_LISTEN) --admin $(LOADTEST_ADMIN) --conns $(LOADTEST_CONNS) \
	  --rate $(LOADTEST_RATE) --heartbeat $(LOADTEST_HEARTBEAT) --duration $(LOADTEST_DURATION) \
	  --scenario $(LOADTEST_SCENARIO) --admin-every $(LOADTEST_ADMIN_EVERY) --json $(LOADTEST_OUT).json --html $(LOADTEST_OUT).html $(LOADTEST_ARGS); rc=$$?; \
	echo "reports: $(LOADTEST_OUT).json $(LOADTEST_OUT).html"; exit $$rc

# The same million with encryption required (Noise NK, issue 13). Both ends'
# X25519 and 110 Go processes share 2 cores, so the ramp is paced by
# --inflight (16 connects in flight per tool worker: ~1,000/s here) rather
# than raced; 55 gateway workers and 18,200 clients per tool worker keep the
# process count (each process's runtime costs CPU when mostly idle) as low as
# the 20,000-file limit allows. docs/measurements.md has the figures.
LOADTEST_ENC_DATA ?= /tmp/longlink-loadtest-1m-encrypted
LOADTEST_ENC_DURATION ?= 26m
LOADTEST_ENC_OUT ?= loadtest-1m-encrypted
loadtest-1m-encrypted: ## loadtest-1m with encryption required: 1,000,000 encrypted connections held with heartbeats
	$(MAKE) loadtest-1m LOADTEST_WORKERS=55 LOADTEST_RATE=1000 LOADTEST_DURATION=$(LOADTEST_ENC_DURATION) \
	  LOADTEST_OUT=$(LOADTEST_ENC_OUT) \
	  LOADTEST_GATEWAY_ARGS='--backend echo --data $(LOADTEST_ENC_DATA) --encryption required --fleet=false --handshake-workers -1 --http "" --push-grpc ""' \
	  LOADTEST_ARGS='--encrypt --keys $(LOADTEST_ENC_DATA)/keys.json --per-proc 18200 --inflight 16'

.PHONY: loadtest-check loadtest-1m loadtest-1m-encrypted
