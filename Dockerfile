# spy-streamer in a container: the daemon by default, the demo with `docker compose up` (compose.yaml).
#   docker build -t spy-streamer .
#   docker run -d --name spy-streamer -e POLYGON_API_KEY=... -v spy-streamer-var:/app/var spy-streamer
# Your own settings: mount them at /app/config/settings.yaml (relative paths start from its folder: ../var/data is /app/var/data).
# The base is pinned to a full version (a floating tag changes the image under the same Dockerfile);
# move it on purpose, e.g. to the next 3.11.x patch release.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# tini as PID 1: it reaps the compaction child and the demo's subprocesses and passes SIGTERM on (a
# Python PID 1 would do neither for children). `docker run --init` is then not needed.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# The dependencies first, in a layer of their own: they come from setup.cfg's install_requires alone, so a
# change to the code reuses this layer instead of reinstalling pyarrow, DuckDB and the rest.
COPY setup.cfg /src/setup.cfg
RUN python -c "import configparser; c = configparser.ConfigParser(); c.read('/src/setup.cfg'); print(c['options']['install_requires'])" > /src/requirements.txt \
    && pip install -r /src/requirements.txt

# Then the package itself (no dependency left to fetch); its sources do not stay in the image. gcc builds
# the frame parser's C fast path (setup.py) and is removed in the same layer.
COPY pyproject.toml setup.py README.md /src/
COPY spy_streamer /src/spy_streamer
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-deps /src \
    && python -c "from spy_streamer.channels import frame_columns; assert frame_columns.AVAILABLE" \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /src /var/lib/apt/lists/*

WORKDIR /app
COPY config/settings.yaml config/settings.yaml
# var/ (Parquet, heartbeat, log, demo output) must belong to the user before VOLUME: later changes are lost.
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home spy \
    && mkdir -p var \
    && chown spy:spy var
VOLUME ["/app/var"]
USER 10001:10001

# tini passes `docker stop`'s SIGTERM to the daemon, which flushes, writes its final heartbeat and exits 0.
STOPSIGNAL SIGTERM
# check --probe: 0 when OK or WARNING (idle while the market is closed counts as OK), 1 otherwise.
HEALTHCHECK --interval=60s --timeout=15s --start-period=30s --retries=3 \
    CMD ["spy-streamer", "check", "--probe", "--timeout", "10"]

ENTRYPOINT ["/usr/bin/tini", "--", "spy-streamer"]
CMD ["run"]
