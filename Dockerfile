# The one image of the pipeline: every stage (`rhd serve <stage>`) and `rhd topics` run from it.
# compose/docker-compose.yml builds it; by hand, from the repository root: docker build -t rhd-pipeline .
# Trained models are not in it: compose mounts models/ (made by `make models`) at /models.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# The runtime set alone first (requirements.lock: no test or lint tools): its layer outlives every change to the
# code. --no-deps: the lock is complete, so nothing unpinned can slip in.
COPY requirements.lock ./
RUN pip install --no-deps -r requirements.lock

# protoc is a build tool: grpcio-tools, exactly as requirements-dev.lock pins it (version and sha256 hashes), goes to
# /opt/protoc, which only this stage has; the venv the image copies never holds it. --no-deps: what it needs
# (grpcio, protobuf, setuptools) is in the runtime set already.
COPY requirements-dev.lock ./
RUN awk '/^[^ #]/ { keep = /^grpcio-tools==/ } keep' requirements-dev.lock > grpcio-tools.txt \
 && grep -q -- '--hash=sha256:' grpcio-tools.txt \
 && pip install --no-deps --target /opt/protoc -r grpcio-tools.txt

COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY services/ services/
# Protobuf code generated as the Makefile does, before the package is built so that the wheel carries it; the lock's
# own setuptools builds it (no build isolation: nothing fetched beyond the lock). Then the venv must be whole
# (pip check) and free of the build tool.
RUN PYTHONPATH=/opt/protoc python -m grpc_tools.protoc -Iprotos --python_out=services --pyi_out=services \
      protos/rhd/v1/*.proto \
 && pip install --no-deps --no-build-isolation . \
 && pip check \
 && rhd --help >/dev/null \
 && ! python -c "import grpc_tools" 2>/dev/null


FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RHD_HTTP_HOST=0.0.0.0 \
    RHD_HTTP_PORT=8000 \
    RHD_BLOB_DIR=/blobs \
    RHD_MODELS_DIR=/models
# A fixed non-root uid (Kubernetes' runAsNonRoot can check a number). /blobs exists and is the user's so that an
# empty named volume mounted there takes that ownership.
RUN groupadd --gid 10001 rhd && useradd --uid 10001 --gid rhd --create-home rhd \
 && mkdir /blobs && chown rhd:rhd /blobs
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/rhd
# /metrics, /healthz, /readyz (RHD_HTTP_PORT)
EXPOSE 8000
ENTRYPOINT ["rhd"]
CMD ["--help"]
