# imapfront container image: a build stage with the compiler and the -dev
# packages, and a runtime stage with only the shared libraries, the binary
# and a default configuration.
#
#   docker build -t imapfront .
#   docker run -p 993:9993 -p 127.0.0.1:9100:9100 \
#       -v /etc/letsencrypt/live/mail.example.org:/etc/imapfront/tls:ro \
#       -v $PWD/proxy.ini:/etc/imapfront/proxy.ini:ro imapfront
#
# The process runs as the unprivileged user imapfront (uid 10001), so it
# listens on high ports: 9993 for IMAP over TLS (publish it as 993) and
# 9100 for the admin endpoint (/metrics, /healthz, /readyz). Logs go to
# stderr. SIGTERM drains the sessions (at most [proxy] drain_timeout, 30 s by
# default): give `docker stop -t` / terminationGracePeriodSeconds more.
#
# tests/deploy/check_container.sh performs these same steps in Debian 12
# roots made by debootstrap, for machines without a container engine.

FROM debian:12 AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        gcc libc6-dev meson ninja-build pkg-config \
        libuv1-dev libinih-dev android-libboringssl-dev libmicrohttpd-dev zlib1g-dev \
        libhiredis-dev \
 && rm -rf /var/lib/apt/lists/*
COPY . /src
WORKDIR /src
RUN meson setup build --buildtype=release -Dtests=disabled \
 && ninja -C build \
 && ./build/src/imapfront -V

FROM debian:12 AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        libuv1 libinih1 android-libboringssl libmicrohttpd12 zlib1g libhiredis0.14 \
        ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin imapfront \
 && install -d -m 0755 /etc/imapfront /etc/imapfront/tls
COPY --from=build /src/build/src/imapfront /usr/local/bin/imapfront
COPY deploy/proxy.ini /etc/imapfront/proxy.ini
# Fails the build if a shared library is missing from this stage.
RUN imapfront -V
# Numeric, so that Kubernetes' runAsNonRoot can check it: this is imapfront.
USER 10001:10001
ENV IMAPFRONT_ADMIN_PORT=9100
EXPOSE 9993 9100
STOPSIGNAL SIGTERM
# /healthz of the admin endpoint, with bash alone (no curl in the image).
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${IMAPFRONT_ADMIN_PORT} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r -t 4 proto code rest <&3 && [ \"$code\" = 200 ]"]
ENTRYPOINT ["imapfront", "-c", "/etc/imapfront/proxy.ini"]
