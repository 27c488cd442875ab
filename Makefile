# kingest development tasks. `make` (or `make help`) lists them.
# Overridable: make test PYTEST_ARGS='-k s3 -x'   make venv PYTHON=python3.12   make up SERVICE=kafka
#              make simulate SEEDS=5000-9999 SIM_ARGS='--steps 300 --jobs 4'
#              make chaos RUNS=10 CLIENT=confluent

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
VENV_PY := $(VENV)/bin/python
DEV_DIR ?= $(or $(KINGEST_DEV_DIR),.kingest-dev)
# devservices.py is stdlib-only: it runs with the venv's python when there is one (it finds `weed` next to it),
# else with the bare interpreter (decided when the command runs, so `make test` uses the venv it just made)
DEVSERVICES ?= "$$(test -x $(VENV_PY) && echo $(VENV_PY) || echo $(PYTHON))" services/devservices.py
SERVICE ?= all
PYTEST_ARGS ?=
BENCH_ARGS ?=
SEEDS ?= 1000
SIM_ARGS ?=
RUNS ?= 1
CLIENT ?= kafka-python

.DEFAULT_GOAL := help
.PHONY: help venv up down status clean lint test chaos demo bench docs simulate spark-read

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The stamp is newer than pyproject.toml once `pip install -e .[dev]` succeeded: re-run only when it changes.
$(VENV)/.installed: pyproject.toml
	@test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed ## create .venv (python3.11, or PYTHON=...) and pip install -e '.[dev]' (again when pyproject.toml changes)

up: ## start Kafka, S3 and the schema registry on 127.0.0.1 (SERVICE=kafka|s3|registry|all), reusing running ones
	@$(DEVSERVICES) up $(SERVICE)

down: ## stop the dev services (SERVICE=kafka|s3|registry|all)
	@$(DEVSERVICES) down $(SERVICE)

status: ## show what runs where
	@$(DEVSERVICES) status

clean: ## stop the services and delete .kingest-dev/ (keeps the downloaded Kafka jars and registry)
	@$(DEVSERVICES) clean

lint: venv ## ruff check, ruff format --check, mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy services/devservices.py services/produce_sample.py services/latency_proxy.py tests/conftest.py

docs: venv ## write docs/configuration.md's table of every key from the config model (kingest/config.py)
	$(VENV_PY) -c 'import pathlib, kingest.config as c; p = pathlib.Path("docs/configuration.md"); p.write_text(c.with_reference_table(p.read_text()))'

# The integration tests run twice: with kafka-python (the whole suite), then with kafka.client: confluent (pytest
# --kafka-client confluent), but for those that never consume through kingest's source (CONFLUENT_SKIP).
# Also left out of the confluent run: the simulation (no Kafka client in it), the S3 outage, the S3 crash points
# and S3 setup errors (the lake's side, which the local crash points and the first run cover with each order of
# commit and write), and verify, status and rewind, whose subject reads Kafka through kafka_admin (kafka-python) whatever the
# client: their runs only fill a lake, which test_run and the others cover with confluent. Of the Delta tests, the
# confluent run keeps those whose consumer matters (each semantics, the exactly-once crash points, the writer
# frozen across a rebalance); rewind, compact, gc and partitioning are the table's side. The schema registry tests
# (Avro, Protobuf, JSON Schema) run once: decoding starts from the records the source hands on, whatever the client;
# so do the lake's S3 request tests (test_lake_s3.py: no Kafka in them) and S3 over https (test_tls.py's
# test_s3_over_https_*: the store's certificates, whatever reads Kafka).
CONFLUENT_SKIP := --ignore=tests/unit --ignore=tests/sim --ignore=tests/integration/test_services.py \
	--ignore=tests/integration/test_schema_registry.py --ignore=tests/integration/test_lake_s3.py \
	--ignore=tests/integration/test_manifest_race.py --ignore=tests/integration/test_guarantees_demo.py \
	--ignore=tests/integration/test_verify.py --ignore=tests/integration/test_status.py \
	--ignore=tests/integration/test_rewind.py \
	--deselect tests/integration/test_faults.py::test_s3_stopped_and_started_during_a_run \
	--deselect tests/integration/test_tls.py::test_s3_over_https_with_a_private_ca \
	--deselect tests/integration/test_tls.py::test_s3_over_https_mistakes \
	--deselect tests/integration/test_guarantees.py::test_crash_point_s3 \
	--deselect "tests/integration/test_bad_inputs.py::test_bad_input_gets_a_clear_message_and_exit_2[S3 endpoint that does not answer]" \
	--deselect "tests/integration/test_bad_inputs.py::test_bad_input_gets_a_clear_message_and_exit_2[wrong S3 credentials]" \
	--deselect "tests/integration/test_bad_inputs.py::test_bad_input_gets_a_clear_message_and_exit_2[missing bucket]" \
	--deselect tests/integration/test_guarantees.py::test_gc_removes_a_crashed_attempts_file_and_nothing_committed \
	--deselect "tests/integration/test_guarantees.py::test_compact_while_a_run_writes_keeps_every_offset_once[s3]" \
	--deselect tests/integration/test_delta.py::test_rewind_of_a_delta_table_takes_the_rows_out_and_the_replay_lands_each_offset_once \
	--deselect tests/integration/test_delta.py::test_compact_merges_small_files_and_keeps_every_offset_and_txn \
	--deselect tests/integration/test_delta.py::test_gc_removes_the_untracked_files_of_a_crashed_writer_once_older_than_the_retention \
	--deselect tests/integration/test_delta.py::test_partition_by_date_and_hour_become_partition_columns_of_the_table \
	--deselect tests/integration/test_delta.py::test_crash_point_delta_s3 \
	--deselect "tests/integration/test_delta.py::test_crash_point_delta_local[at-least-once-after-write:2]" \
	--deselect "tests/integration/test_delta.py::test_crash_point_delta_local[at-most-once-after-commit:2]"

# The chaos tests (marker `chaos`, tests/integration/test_chaos.py) and the long soaks (marker `soak`: three
# instances under kills and freezes, ten random kills) are `make chaos`'s, not `make test`'s.
NOT_CHAOS := -m 'not chaos and not soak'

# Starts what is not running yet, runs pytest (twice, see above), then stops only what this run started (services
# that were up before `make test` stay up). The recipe exits with the first failing pytest's exit code (both runs
# run); GNU make itself then exits with 2 on any failure (.ci/run passes pytest's code on). Exit code 5 (no tests
# collected) fails with a message; in the confluent run it only means PYTEST_ARGS selected no integration test.
test: venv ## start the services, run pytest (PYTEST_ARGS=...) with each Kafka client, stop what this run started
	@trap true INT TERM; started="$(DEV_DIR)/make-test.$$$$.started"; \
	$(DEVSERVICES) up all --record "$$started" || { rc=$$?; $(DEVSERVICES) down --started-by "$$started"; exit $$rc; }; \
	$(VENV_PY) -m pytest $(NOT_CHAOS) $(PYTEST_ARGS); rc=$$?; \
	echo "== make test: the integration tests again, with kafka.client: confluent"; \
	$(VENV_PY) -m pytest --kafka-client confluent $(CONFLUENT_SKIP) $(NOT_CHAOS) $(PYTEST_ARGS); rc2=$$?; \
	$(DEVSERVICES) down --started-by "$$started"; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit code 5): failing on purpose; check PYTEST_ARGS='$(PYTEST_ARGS)'" >&2; \
	elif [ $$rc -ne 0 ]; then echo "make test: pytest exit code $$rc" >&2; fi; \
	if [ $$rc2 -ne 0 ] && [ $$rc2 -ne 5 ]; then echo "make test: pytest --kafka-client confluent exit code $$rc2" >&2; \
		[ $$rc -ne 0 ] || rc=$$rc2; fi; \
	echo $$rc > "$(DEV_DIR)/last-test-exit-code"; \
	exit $$rc

# `make chaos`: the chaos-marked tests, plus the tests that check the guarantees under kills and freezes.
CHAOS_ALSO := tests/integration/test_scale.py \
	tests/integration/test_faults.py::test_broker_stopped_and_started_during_a_run \
	tests/integration/test_faults.py::test_s3_stopped_and_started_during_a_run \
	tests/integration/test_faults.py::test_local_write_killed_half_way_is_never_counted \
	tests/integration/test_guarantees.py::test_exactly_once_soak_under_random_kills

# Like `make test`: starts what is not running yet and stops only that at the end. A CPU hog (a busy loop, one
# core) runs for the whole time and is killed at the end whatever happens (EXIT trap). Each run is two pytest
# calls (the chaos marker, then CHAOS_ALSO); the first failing call stops the loop and names its run.
chaos: venv ## chaos tests + kill/freeze tests under a CPU hog, RUNS=N times (default 1), CLIENT=confluent too
	@trap true INT TERM; started="$(DEV_DIR)/make-chaos.$$$$.started"; hog=; \
	trap '[ -z "$$hog" ] || kill $$hog 2>/dev/null; $(DEVSERVICES) down --started-by "$$started"' EXIT; \
	$(DEVSERVICES) up all --record "$$started" || exit $$?; \
	$(VENV_PY) -c 'while True: pass' & hog=$$!; \
	echo "== make chaos: a CPU hog on one core (pid $$hog), $(RUNS) run(s), kafka.client: $(CLIENT)"; \
	rc=0; run=1; \
	while [ $$run -le $(RUNS) ]; do \
		echo "== make chaos: run $$run of $(RUNS)"; \
		$(VENV_PY) -m pytest --kafka-client $(CLIENT) -m chaos tests/integration $(PYTEST_ARGS); r1=$$?; \
		if [ $$r1 -ne 0 ] && [ $$r1 -ne 5 ]; then \
			echo "make chaos: run $$run of $(RUNS) FAILED in the chaos tests (pytest exit code $$r1, kafka.client: $(CLIENT))" >&2; \
			rc=$$r1; break; fi; \
		$(VENV_PY) -m pytest --kafka-client $(CLIENT) $(CHAOS_ALSO) $(PYTEST_ARGS); r2=$$?; \
		if [ $$r2 -ne 0 ] && [ $$r2 -ne 5 ]; then \
			echo "make chaos: run $$run of $(RUNS) FAILED in the kill/freeze tests (pytest exit code $$r2, kafka.client: $(CLIENT))" >&2; \
			rc=$$r2; break; fi; \
		if [ $$r1 -eq 5 ] && [ $$r2 -eq 5 ]; then \
			echo "make chaos: pytest collected no tests: check PYTEST_ARGS='$(PYTEST_ARGS)'" >&2; rc=5; break; fi; \
		run=$$((run + 1)); \
	done; \
	[ $$rc -ne 0 ] || echo "== make chaos: $(RUNS) run(s) passed (kafka.client: $(CLIENT))"; \
	exit $$rc

# The Avro step lands the whole topic each time (lake/orders-avro is emptied first). The registry keeps its schemas
# in memory and Kafka keeps its topics on disk: a topic whose records name an id the registry no longer gives the
# sample schema (it was restarted) is deleted and produced again (--recreate-stale).
demo: venv ## Kafka + sample orders, kingest run into ./lake/orders, what landed, the three semantics under a crash, a Delta table, then an Avro topic
	@$(DEVSERVICES) up kafka
	@$(DEVSERVICES) up registry
	@eval "$$($(DEVSERVICES) env)"; set -e; \
	$(VENV_PY) services/produce_sample.py --topic orders --records 20000 --skip-if-present; \
	echo; echo "== kingest run -c configs/orders.yaml --until-caught-up"; \
	$(VENV)/bin/kingest run -c configs/orders.yaml --until-caught-up; \
	echo; echo "== what landed: kingest status -c configs/orders.yaml"; \
	$(VENV)/bin/kingest status -c configs/orders.yaml; \
	echo; echo "== read back with DuckDB"; \
	$(VENV_PY) -c "import duckdb; duckdb.sql(\"select kafka_partition, count(*) as records, min(kafka_offset) as first, max(kafka_offset) as last, round(sum(amount), 2) as amount from read_parquet('lake/orders/**/*.parquet', hive_partitioning = true) group by 1 order by 1\").show()"; \
	echo "== the three semantics against the same topic, each killed between its two steps"; \
	$(VENV_PY) -m kingest.demo --bootstrap "$$KINGEST_KAFKA_BOOTSTRAP" --topic orders; \
	echo; echo "== the same topic into a Delta Lake table: kingest run -c configs/orders-delta.yaml --until-caught-up"; \
	$(VENV)/bin/kingest run -c configs/orders-delta.yaml --until-caught-up; \
	echo; echo "== read back with deltalake and DuckDB: each partition's rows, and the offsets the table's commits hold"; \
	$(VENV_PY) -c "import duckdb; from deltalake import DeltaTable; t = DeltaTable('lake/orders-delta'); print('table version', t.version(), '| txn', {a: t.transaction_version(a) for a in sorted(f'kingest-orders-delta-orders-{p}' for p in range(3))}); duckdb.sql(f\"select kafka_partition, count(*) as records, min(kafka_offset) as first, max(kafka_offset) as last from read_parquet({t.file_uris()}, hive_partitioning = true) group by 1 order by 1\").show()"; \
	echo "== the sample orders as Avro (Confluent wire format, schema under orders-avro-value in the registry)"; \
	$(VENV_PY) services/produce_sample.py --format avro --registry "$$KINGEST_REGISTRY_URL/apis/ccompat/v7" \
		--topic orders-avro --records 5000 --skip-if-present --recreate-stale; \
	rm -rf lake/orders-avro; \
	echo; echo "== kingest run -c configs/orders-avro.yaml --until-caught-up (records.format: avro; into a fresh lake/orders-avro)"; \
	$(VENV)/bin/kingest run -c configs/orders-avro.yaml --until-caught-up; \
	echo; echo "== read back with DuckDB: the schema id in each file's footer, and the columns the Avro schema typed"; \
	$(VENV_PY) -c "import duckdb; f = 'lake/orders-avro/**/*.parquet'; duckdb.sql(\"set TimeZone = 'UTC'\"); duckdb.sql(f\"select decode(key) as footer_key, string_agg(distinct decode(value), ', ') as value, count(*) as files from parquet_kv_metadata('{f}') where decode(key) in ('kingest.schema_ids', 'kingest.schema_subjects') group by 1 order by 1\").show(); duckdb.sql(f\"select order_id, amount, currency, status, len(items) as n_items, items[1].price as item_1_price, created_at from read_parquet('{f}') order by created_at limit 3\").show()"

# tests/sim: kingest's own exactly-once code (Pipeline, ManifestStore, Lake) driven by simulated writers on an in-memory
# lake, every lake operation interleaved by a seeded scheduler with pauses, crashes, rebalances and rewinds. The
# pytest run checks 10,000 seeds (tests/sim/test_simulation.py); this runs as many as you like, on every core.
simulate: venv ## the exactly-once simulation for SEEDS=N | A-B | a,b,c (default 1000); prints how to replay each failure
	$(VENV_PY) -m tests.sim.simulate $(SEEDS) $(SIM_ARGS)

# Spark reads a kingest Delta table (make demo writes lake/orders-delta): pyspark from PyPI, delta-spark's jars from
# Maven Central (Spark's --packages), Java 17. Not in `make test`: pyspark is a 300 MB download.
SPARK_TABLE ?= lake/orders-delta
spark-read: venv ## read a Delta table (SPARK_TABLE=..., default lake/orders-delta) with Spark + delta-spark; checks it agrees with delta-rs
	@$(VENV_PY) -c 'import pyspark' 2>/dev/null || $(VENV_PY) -m pip install -q 'pyspark==3.5.3'
	$(VENV_PY) services/spark_read.py $(SPARK_TABLE)

bench: venv ## run benchmarks/bench.py (BENCH_ARGS=...), with the bench and fast extras
	@if [ -f benchmarks/bench.py ]; then \
		$(VENV_PY) -c 'import matplotlib, confluent_kafka' 2>/dev/null || $(VENV_PY) -m pip install -q -e '.[bench,fast]'; \
		$(VENV_PY) benchmarks/bench.py $(BENCH_ARGS); \
	else \
		echo "benchmarks/bench.py does not exist yet: nothing to run"; \
	fi
