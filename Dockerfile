# smsgw: one image, the role is the first argument (api, worker, simulator).
# Build stage: install smsgw and its pinned dependencies into a prefix, no compiler left behind.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml constraints.txt README.md ./
COPY gateway ./gateway
COPY workers ./workers
COPY devkit ./devkit
RUN pip install --prefix=/install -c constraints.txt .

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 smsgw \
    && useradd --system --uid 10001 --gid smsgw --home-dir /app --shell /usr/sbin/nologin smsgw \
    && mkdir -p /app /tmp/prometheus \
    && chown smsgw:smsgw /app /tmp/prometheus
COPY --from=build /install /usr/local
COPY docker/entrypoint.sh /usr/local/bin/smsgw-entrypoint
WORKDIR /app
USER 10001:10001
ENV PYTHONUNBUFFERED=1 \
    SMSGW_BIND=0.0.0.0:8080 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus
EXPOSE 8080
# The API's liveness; compose turns it off for the worker and simulator roles.
HEALTHCHECK --interval=15s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["smsgw-entrypoint"]
CMD ["api"]
