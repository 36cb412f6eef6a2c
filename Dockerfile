# walletd in a container, against the PostgreSQL named by DATABASE_URL (see docker-compose.yml).
# The install steps mirror `make install`, which CI proves on every run.
FROM python:3.11-slim

# PYTHONMALLOC=malloc lets memory freed after a burst of wallets return to the OS (see README).
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PYTHONMALLOC=malloc
WORKDIR /app
RUN useradd --create-home --uid 10001 walletd

COPY pyproject.toml README.md ./
COPY walletd ./walletd
RUN pip install --upgrade pip \
 && pip install -e . \
 && pip install --no-deps 'drf-spectacular-sidecar>=2024.1'

USER walletd
EXPOSE 8010
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8010/ready', timeout=2).status == 200 else 1)"
CMD ["walletd", "serve", "--host", "0.0.0.0", "--port", "8010"]
