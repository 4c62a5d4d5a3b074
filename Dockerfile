# One image for the three services; the Helm chart picks one per Deployment:
#   python -m services.fetcher | services.filter | services.uploader
# Build: docker build --build-arg PYTHON_IMAGE=<slim Python 3.11 base> -t mati2sentinel .
#    or: make image (buildah, no Docker engine; scripts/build-image.sh)
# The base is an ARG so a site can use its own mirrored or hardened Python 3.11 slim image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the project wheel and its runtime dependencies into /opt/venv --------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
# Runtime dependencies only: no dev or simulator extras (no trustme, no test tools).
# Only wheels: nothing is compiled, so the build stage needs no compiler either.
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --only-binary=:all: /wheels/mati2sentinel-*.whl \
    && /opt/venv/bin/pip uninstall --yes pip setuptools \
    && /opt/venv/bin/python -c "import services.fetcher.main, services.filter.main, services.uploader.main"

# --- runtime: the interpreter, the virtualenv, a numeric non-root user; no build tools ------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HEALTH_PORT=8080
# pip, setuptools and wheel of the base image are build tools: not in the image that runs.
RUN python -m pip uninstall --yes pip setuptools wheel \
    && groupadd --system --gid 10001 mati2sentinel \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin mati2sentinel
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
# /livez and /readyz (HEALTH_PORT).
EXPOSE 8080
# Kubernetes sets the command per Deployment; alone, the image runs the fetcher.
CMD ["python", "-m", "services.fetcher"]
