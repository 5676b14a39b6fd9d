# idgen HTTP service. Configuration is by environment variables only (IDGEN_*; see docs/DEPLOY.md).
#   docker build -t idgen . && docker run -p 8080:8080 idgen
# Build stage: turn the repo into wheels. The final stage gets no compiler, no pip cache, no test tools.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY idgen ./idgen
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# A fixed numeric UID/GID, and USER given as numbers: Kubernetes' runAsNonRoot can only verify a numeric user.
RUN groupadd --system --gid 10001 idgen \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/idgen --create-home --shell /usr/sbin/nologin idgen
COPY --from=build /wheels /wheels
# Byte-compiled at build time: the process never writes .pyc files, so a read-only root filesystem is fine.
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY cmd/idgen-serve /usr/local/bin/idgen-serve
USER 10001:10001
# idgen alone binds 127.0.0.1; in a container it must listen on every interface to be reached at all.
ENV IDGEN_HOST=0.0.0.0 \
    IDGEN_PORT=8080 \
    IDGEN_STATE_DIR=/var/lib/idgen \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
# The local lease's state directory serves one host only: mount a volume here, or set IDGEN_ZK (then it is unused).
VOLUME ["/var/lib/idgen"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('IDGEN_PORT', '8080') + '/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["idgen-serve"]
