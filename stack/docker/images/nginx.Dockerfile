# nginx 1.22 (Debian's package) as the load balancer; the upstream file is rendered and bind-mounted.
# Build context: the `stack/` directory.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
COPY docker/images/certs/ /tmp/scalelab-certs/
COPY docker/images/scripts/apt-install /usr/local/bin/
RUN apt-install nginx \
 && rm -f /etc/nginx/sites-enabled/default
COPY docker/images/scripts/http-health docker/images/scripts/nginx-reload docker/images/scripts/nginx-start \
     docker/images/scripts/nginx-follow-tasks /usr/local/bin/
EXPOSE 80
HEALTHCHECK --interval=5s --timeout=3s --retries=3 CMD ["http-health", "80", "/nginx-health"]
CMD ["nginx-start"]
