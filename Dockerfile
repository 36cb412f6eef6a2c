# walletd in a container, against the PostgreSQL named by DATABASE_URL (see docker-compose.yml).
# `make test-docker` builds and runs this file (tests/docker/run.sh; docs/operations.md).
FROM python:3.11-slim

# PYTHONMALLOC=malloc lets memory freed after a burst of wallets return to the OS (see docs/configuration.md).
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONMALLOC=malloc PATH=/opt/walletd/bin:$PATH
RUN useradd --create-home --uid 10001 walletd

# Set only where pip must reach PyPI through a mirror (tests/docker/run.sh passes this machine's).
ARG PIP_INDEX_URL
COPY pyproject.toml README.md /src/
COPY walletd /src/walletd
# A virtual environment of its own: any python3 base works (Debian's refuses pip outside one),
# and root owns it, so the service user cannot change the code it runs.
RUN python3 -m venv /opt/walletd \
 && pip install --upgrade pip \
 && pip install /src \
 && pip install --no-deps 'drf-spectacular-sidecar>=2024.1' \
 && rm -rf /src

USER walletd
WORKDIR /home/walletd
EXPOSE 8010
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8010/ready', timeout=2).status == 200 else 1)"
CMD ["walletd", "serve", "--host", "0.0.0.0", "--port", "8010"]
