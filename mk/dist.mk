# Release archives (issue 17): `make dist` cross-compiles the one binary for
# linux/amd64 and linux/arm64 and packs each with the docs, the systemd unit,
# the example config and the dashboard, plus SHA256SUMS.
DIST_ARCHES ?= amd64 arm64
DIST_DIR    ?= dist

dist: ## versioned release archives for linux/amd64 and arm64 in dist/
	@set -e; rm -rf $(DIST_DIR); mkdir -p $(DIST_DIR); \
	for arch in $(DIST_ARCHES); do \
	  name=longlink-$(VERSION)-linux-$$arch; d=$(DIST_DIR)/$$name; mkdir -p $$d; \
	  CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags "$(LDFLAGS) -s -w" -o $$d/longlink ./cmd/longlink; \
	  cp -r README.md docs deploy web/longlink.js web/example.html $$d/; \
	  tar -C $(DIST_DIR) -czf $(DIST_DIR)/$$name.tar.gz $$name; rm -rf $$d; \
	  echo "$(DIST_DIR)/$$name.tar.gz"; \
	done; \
	cd $(DIST_DIR) && sha256sum *.tar.gz > SHA256SUMS

.PHONY: dist
