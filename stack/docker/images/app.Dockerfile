# The app replicas: Debian's python3 + the pinned app requirements + the `stack` package.
# Build context: the `stack/` directory (see stack/compose.yml, or `python -m stack.docker build`).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
COPY docker/images/certs/ /tmp/scalelab-certs/
COPY docker/images/scripts/apt-install docker/images/scripts/http-health /usr/local/bin/
RUN apt-install python3 python3-venv
COPY docker/images/app-requirements.txt /tmp/app-requirements.txt
# PIP_CERT: pip trusts the system store, which now holds any extra CA certificates.
RUN python3 -m venv /opt/venv \
 && PIP_CERT=/etc/ssl/certs/ca-certificates.crt /opt/venv/bin/pip install -q --no-cache-dir \
        --disable-pip-version-check -r /tmp/app-requirements.txt \
 && rm /tmp/app-requirements.txt \
 && useradd --system --uid 10001 --user-group --home-dir /opt/scalelab --shell /usr/sbin/nologin scalelab \
 && mkdir -p /run/scalelab && chmod 755 /run/scalelab
COPY . /opt/scalelab/stack
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/opt/scalelab PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /opt/scalelab
USER scalelab
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --retries=3 CMD ["http-health", "8000", "/health"]
CMD ["uvicorn", "stack.app.service:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", \
     "--http", "stack.app.connections:CountingHttpToolsProtocol", "--loop", "uvloop", "--no-access-log", "--log-level", "warning", \
     "--backlog", "2048", "--timeout-graceful-shutdown", "5"]
