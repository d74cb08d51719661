# spy-streamer in a container: the daemon by default, the demo with `docker compose up` (compose.yaml).
#   docker build -t spy-streamer .
#   docker run -d --name spy-streamer -e POLYGON_API_KEY=... -v spy-streamer-var:/app/var spy-streamer
# Your own settings: mount them at /app/config/settings.yaml (relative paths resolve against /app).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The package goes into site-packages; its sources do not stay in the image.
COPY setup.cfg pyproject.toml README.md /src/
COPY spy_streamer /src/spy_streamer
RUN pip install /src && rm -rf /src

WORKDIR /app
COPY config/settings.yaml config/settings.yaml
# var/ (Parquet, heartbeat, log, demo output) must belong to the user before VOLUME: later changes are lost.
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home spy \
    && mkdir -p var \
    && chown spy:spy var
VOLUME ["/app/var"]
USER 10001:10001

# The daemon flushes, writes its final heartbeat and exits 0 on SIGTERM (docker stop); it is PID 1 here.
STOPSIGNAL SIGTERM
# check --probe: 0 when OK or WARNING (idle while the market is closed counts as OK), 1 otherwise.
HEALTHCHECK --interval=60s --timeout=15s --start-period=30s --retries=3 \
    CMD ["spy-streamer", "check", "--probe", "--timeout", "10"]

ENTRYPOINT ["spy-streamer"]
CMD ["run"]
