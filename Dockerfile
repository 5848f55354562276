# flowprep + trainer in one image: `flowprep` is the entrypoint, `--entrypoint trainer` for training.
# Build and run: see pipelines/README.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

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

ENTRYPOINT ["flowprep"]
CMD ["--help"]
