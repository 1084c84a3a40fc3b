# kubetrade's container image: the operator and every bot component (feed, inference, executor).
#
#   docker build -t ghcr.io/kubetrade/kubetrade:0.1.0 .
#
# Runtime dependencies only (`pip install .`, no extras): no PyTorch, no training libraries, no
# embedded NATS/PostgreSQL, no compilers. Runs as uid/gid 10001 on a read-only root filesystem:
# the only path written at runtime is /tmp (HOME and BENTOML_HOME live under it), which a pod
# mounts as an emptyDir. Every entry point stops cleanly on SIGTERM (asyncio handlers in the
# workers, kopf in the operator, BentoML's arbiter in inference); tini is the entrypoint so a
# bare `docker run` also forwards signals and reaps orphans.
#
# Offline builds: `make image` (tests/cluster/build.py) builds the base below from Debian's
# packages with mmdebstrap, prepares a wheelhouse on the host and passes
# `--build-arg WHEELHOUSE=build/wheelhouse`, so pip never contacts an index inside the build.

ARG BASE=docker.io/library/debian:bookworm-slim

# --------------------------------------------------------------------------- python runtime
FROM ${BASE} AS python
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 tini ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/apt \
      /var/log/dpkg.log

# --------------------------------------------------------------------------- build the venv
FROM python AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv binutils \
 && rm -rf /var/lib/apt/lists/*
ARG WHEELHOUSE=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
COPY . /src
RUN python3 -m venv /opt/kubetrade \
 && if [ -n "$WHEELHOUSE" ]; then \
      set -- --no-index --find-links "/src/$WHEELHOUSE"; \
    fi \
 && /opt/kubetrade/bin/pip install --no-compile "$@" /src \
 && /opt/kubetrade/bin/pip uninstall -y pip
# What the runtime never reads, measured (sizes as installed from the wheels):
#  - byte code (~160 MB): none is shipped; PYTHONPYCACHEPREFIX puts it on the /tmp emptyDir
#  - test suites, stubs, headers shipped inside wheels
#  - pyarrow's Flight RPC and S3 filesystem (~55 MB; nothing imports pyarrow.flight, and
#    pyarrow.fs treats a missing S3 module as "not built with S3"), its C++ test module, and two
#    duplicate copies of each libarrow_python*.so (symlinks instead)
#  - kubernetes.aio (~60 MB): the asyncio twin of the client; the operator uses the sync client
#  - onnxruntime's libonnxruntime.so (35 MB): the C API library for other languages; the Python
#    binding links the runtime statically (its NEEDED entries are libc/libstdc++ only)
#  - debug symbols of the extension modules (strip --strip-unneeded; ~60 MB, uvloop alone 12 MB)
# then import everything whose files were touched, so a bad prune fails the build, not a pod.
ARG SITE=/opt/kubetrade/lib/python3.11/site-packages
RUN find /opt/kubetrade -depth -type d \( -name __pycache__ -o -name tests \) -exec rm -rf {} + \
 && find /opt/kubetrade -type f \( -name '*.pyi' -o -name '*.pxd' -o -name '*.pyc' \) -delete \
 && rm -rf "$SITE/pyarrow/include" "$SITE/pyarrow/src" "$SITE/kubernetes/aio" "$SITE/ccxt/test" \
 && rm -f "$SITE"/onnxruntime/capi/libonnxruntime.so.* \
 && cd "$SITE/pyarrow" \
 && rm -f _flight.*.so libarrow_flight.so.* libarrow_python_flight.so* _s3fs.*.so libarrow_s3.so.* \
      _pyarrow_cpp_tests.*.so \
 && for lib in libarrow_python libarrow_python_parquet_encryption; do \
      real=$(ls -d $lib.so.*.*.*); \
      for f in $lib.so $lib.so.*; do [ "$f" = "$real" ] || ln -sf "$real" "$f"; done; \
    done \
 && find "$SITE" -name '*.so*' -type f -not -path '*.libs/*' -exec strip --strip-unneeded {} + \
 && cd / \
 && /opt/kubetrade/bin/python -B -c "import pyarrow, pyarrow.parquet, pyarrow.dataset, pyarrow.fs, \
      pyarrow.compute, uvloop, yaml, aiohttp, cryptography.x509, onnxruntime, numpy, pandas, \
      psycopg, pydantic, orjson, kubernetes.client, kopf, bentoml, kubetrade.cli; \
      import onnxruntime as ort; assert 'CPUExecutionProvider' in ort.get_available_providers()" \
 && /opt/kubetrade/bin/kubetrade --help >/dev/null \
 && find /opt/kubetrade -name __pycache__ -type d -exec rm -rf {} +

# --------------------------------------------------------------------------- the image
FROM python
COPY --from=build /opt/kubetrade /opt/kubetrade
RUN groupadd --system --gid 10001 kubetrade \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin kubetrade
ENV PATH=/opt/kubetrade/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp \
    BENTOML_HOME=/tmp/bentoml \
    BENTOML_DO_NOT_TRACK=true \
    ORT_DISABLE_TELEMETRY=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPYCACHEPREFIX=/tmp/pycache
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["/usr/bin/tini", "--", "kubetrade"]
CMD ["--help"]
