# idgen HTTP service. Configuration is by environment variables only (IDGEN_*; see README.md).
#   docker build -t idgen . && docker run -p 8080:8080 idgen
# Build stage: turn the repo into wheels. The final stage gets no compiler, no pip cache, no test tools.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY idgen ./idgen
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/idgen --create-home idgen
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-compile /wheels/*.whl && rm -rf /wheels
COPY cmd/idgen-serve /usr/local/bin/idgen-serve
USER idgen
ENV IDGEN_HOST=0.0.0.0 \
    IDGEN_PORT=8080 \
    IDGEN_STATE_DIR=/var/lib/idgen \
    PYTHONUNBUFFERED=1
EXPOSE 8080
# A local state directory only serves one host: mount a volume at /var/lib/idgen, or set IDGEN_ZK.
VOLUME ["/var/lib/idgen"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('IDGEN_PORT', '8080') + '/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["idgen-serve"]
