# The one flashsale image: the API (`serve`), the ledger `writer`, `campaign load`, `stats`,
# `reconcile` ... all run it with another command (deploy/docker-compose.yml).
#   docker build -t flashsale .
#   docker run --rm flashsale --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# what `pip install .` needs: the project metadata (its readme and licence included) and the package
COPY pyproject.toml README.md LICENSE /src/
COPY engine /src/engine
RUN pip install /src && rm -rf /src

# an unprivileged user; campaign definitions to load from
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /app flashsale
COPY --chown=flashsale:flashsale campaigns /app/campaigns
WORKDIR /app
USER flashsale

EXPOSE 8000
ENTRYPOINT ["flashsale"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
