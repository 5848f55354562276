# flowprep + trainer in one image: `flowprep` is the entrypoint (under tini), `--init --entrypoint trainer` for
# training.
# Build and run: see pipelines/README.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

# tini (Debian's package) runs as PID 1: it passes docker stop's SIGTERM (and Ctrl-C) on to flowprep, which
# stops its workers and flow processes and exits 143, and it reaps orphaned processes (a process started as
# PID 1 without an init leaves their zombies). An --entrypoint override drops it: add `docker run --init`.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# Only what `pip install .` needs (setup.cfg reads README.md); .dockerignore keeps the rest out.
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY flowprep ./flowprep
COPY trainer ./trainer

# The README's install command. The OpenCV dependency is opencv-contrib-python-headless: no X/GL
# libraries are needed; decord, h5py and torch wheels bring their own native libraries.
RUN pip install --no-cache-dir . \
    && rm -rf /src

# A numeric non-root user, so that Kubernetes' runAsNonRoot can check it. Mounted output folders
# must be writable by it (or run with --user "$(id -u):$(id -g)").
RUN useradd --create-home --uid 1000 --user-group flowprep
USER 1000:1000
WORKDIR /work

ENTRYPOINT ["/usr/bin/tini", "--", "flowprep"]
CMD ["--help"]
