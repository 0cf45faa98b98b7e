# Shake red packets (docs/shake.md): a small end-to-end demo and the 100M scale run.
SHAKE_TMP ?= /tmp/longlink-shake
TIME := $(shell test -x /usr/bin/time && echo /usr/bin/time -v)

shake-demo: build ## shake: keys → gen → verify → split → verify → ledger → reconcile on the demo budget
	rm -rf $(SHAKE_TMP) && mkdir -p $(SHAKE_TMP)
	./$(BIN) shake keys -keys $(SHAKE_TMP)/keys -n 100
	./$(BIN) shake check -budget shake/testdata/budget.yaml
	./$(BIN) shake gen -budget shake/testdata/budget.yaml -plan A -keys $(SHAKE_TMP)/keys -out $(SHAKE_TMP)/gen
	./$(BIN) shake verify -dir $(SHAKE_TMP)/gen -keys $(SHAKE_TMP)/keys
	./$(BIN) shake split -in $(SHAKE_TMP)/gen -out $(SHAKE_TMP)/split -instances 4
	./$(BIN) shake verify -dir $(SHAKE_TMP)/split -keys $(SHAKE_TMP)/keys
	./$(BIN) shake fake-ledger -dir $(SHAKE_TMP)/split -keys $(SHAKE_TMP)/keys -out $(SHAKE_TMP)/ledger.csv -fraction 0.8
	./$(BIN) shake reconcile -dir $(SHAKE_TMP)/split -keys $(SHAKE_TMP)/keys -ledger $(SHAKE_TMP)/ledger.csv
	rm -rf $(SHAKE_TMP)

shake-100m: build ## shake: generate and verify 100M packets (1.8 GB) with time and peak RSS, then delete them
	rm -rf $(SHAKE_TMP) && mkdir -p $(SHAKE_TMP)
	./$(BIN) shake keys -keys $(SHAKE_TMP)/keys -n 1000
	$(TIME) ./$(BIN) shake gen -budget shake/testdata/budget-100m.yaml -keys $(SHAKE_TMP)/keys -out $(SHAKE_TMP)/gen
	$(TIME) ./$(BIN) shake verify -dir $(SHAKE_TMP)/gen -keys $(SHAKE_TMP)/keys
	rm -rf $(SHAKE_TMP)

shake-bench: ## shake: generation (with and without disk), verify and dispense benchmarks
	$(GO) test -run '^$$' -bench . -benchtime 5x -count 3 ./shake/

.PHONY: shake-demo shake-100m shake-bench
