# The bridge's image. One image for every role (docs/DEPLOYMENT.md):
#   spbridge serve --host 0.0.0.0 [--no-migrate] [--no-dispatcher]   the API (the default)
#   spbridge worker                                                    delivery workers
#   spbridge migrate / spbridge purge                                  one-off jobs
# Configure with SPBRIDGE_* environment variables at run time: no setting or secret is baked in.
# SPBRIDGE_PUBLIC_BASE_URL is required (serve and worker refuse to start without it).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY adapters ./adapters
# The bridge and every dependency as wheels (all have binary wheels for this platform, so the
# runtime stage needs no compiler).
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --system --uid 10001 --user-group --home-dir /srv/spbridge --no-create-home \
        --shell /usr/sbin/nologin spbridge
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels
WORKDIR /srv/spbridge
# Read at run time from the working directory: the migrations and the FHIR artefacts. Owned by
# root, so the service cannot change them.
COPY migrations ./migrations
COPY fhir ./fhir
# The only writable place: the default SQLite database (single-process use only).
RUN mkdir var && chown spbridge:spbridge var
USER spbridge:spbridge
EXPOSE 8000
# Liveness only: the process answers. Readiness (/readyz) is for the orchestrator's probe. A
# worker container serves no HTTP: run it with --no-healthcheck (or healthcheck: disable).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# uvicorn and `spbridge worker` shut down gracefully on SIGTERM (SPBRIDGE_SHUTDOWN_GRACE_SECONDS).
STOPSIGNAL SIGTERM
CMD ["spbridge", "serve", "--host", "0.0.0.0"]
