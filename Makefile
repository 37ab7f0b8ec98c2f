# Two commands on a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv demo test lint bench clean proto check-native

$(STAMP): pyproject.toml gateway/masking/_rowwalk.c gateway/masking/_prefilter.c gateway/wire/_framing.c gateway/audit/_seal.c \
		gateway/enforce/_shape.c gateway/policy/_input.c
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "pgwarden needs Python 3.11+ (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/pgwarden demo

test: $(STAMP)
	$(BIN)/ruff check gateway tests tools
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check gateway tests tools
	$(BIN)/mypy

# The benchmark wants Debian's pgbouncer and an SSL-capable pgbench (postgresql-client-15).
bench: $(STAMP)
	@command -v pgbouncer >/dev/null 2>&1 || test -x /usr/sbin/pgbouncer || \
		(apt-get update -q && apt-get install -y -q pgbouncer postgresql-client-15)
	$(BIN)/python tools/bench.py $(BENCH_ARGS)

# The C modules' tests under AddressSanitizer/UBSan (needs gcc with libasan).
check-native: $(STAMP)
	$(BIN)/python tools/check_native.py

# The admin API's gRPC code is generated from the .proto files and committed; this
# regenerates it byte for byte (grpcio-tools comes with the test extras).
PROTOS := gateway/admin/admin.proto gateway/admin/health.proto

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	sed -i '1i # ruff: noqa' $(PROTOS:.proto=_pb2.py) $(PROTOS:.proto=_pb2.pyi) $(PROTOS:.proto=_pb2_grpc.py)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache .hypothesis
	find gateway -name '*.so' -delete
