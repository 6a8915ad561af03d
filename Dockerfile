# syntax=docker/dockerfile:1
# The metering gateway in a slim image: non-root, config mounted read-only, storage on a volume.
#   docker build -t metering-gateway .
#   docker run -p 8080:8080 -e GATEWAY_ADMIN_TOKEN=... \
#     -v $PWD/config.toml:/etc/gateway/config.toml:ro -v gateway-data:/var/lib/gateway \
#     metering-gateway
# The config's [storage] url should point into the volume: sqlite:////var/lib/gateway/gateway.db
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/gateway \
 && /opt/gateway/bin/pip install --upgrade pip \
 && /opt/gateway/bin/pip install .

FROM ${BASE_IMAGE}
ENV PATH=/opt/gateway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GATEWAY_CONFIG=/etc/gateway/config.toml
COPY --from=build /opt/gateway /opt/gateway
COPY config.example.toml /etc/gateway/config.toml
RUN useradd --system --uid 10001 --home-dir /var/lib/gateway --shell /usr/sbin/nologin gateway \
 && mkdir -p /var/lib/gateway \
 && chown gateway:gateway /var/lib/gateway \
 && sed -i 's#^url = "sqlite:///./gateway.db"#url = "sqlite:////var/lib/gateway/gateway.db"#; s#^host = "127.0.0.1"#host = "0.0.0.0"#' /etc/gateway/config.toml
USER gateway
WORKDIR /var/lib/gateway
VOLUME ["/var/lib/gateway"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["gateway"]
CMD ["serve"]
