# Production image: migrations at start, then the API. Point SPBRIDGE_DATABASE_URL at PostgreSQL.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY adapters ./adapters
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --create-home --uid 10001 spbridge
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/* && rm -rf /wheels
WORKDIR /srv/spbridge
# Data the service reads at run time: migrations and the FHIR artefacts.
COPY --chown=spbridge:spbridge migrations ./migrations
COPY --chown=spbridge:spbridge fhir ./fhir
RUN mkdir -p var && chown spbridge:spbridge var
USER spbridge
EXPOSE 8000
CMD ["spbridge", "serve", "--host", "0.0.0.0", "--port", "8000"]
