# The chorus-bridge image: the bridge (`chorus-bridge run`, the default) and, with another
# command, the simulated agent (`chorus-bridge sim-agent`).
#
# The base is a build argument so the image can be built on any Debian-like Python 3.11+ image,
# for instance one made without any registry (scripts/build-images.sh):
#   docker build -t chorus-bridge:latest .
#   docker build --build-arg BASE_IMAGE=chorus-python-base:test -t chorus-bridge:test .
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
WORKDIR /src
# Dependencies first, from the project metadata and the lock alone, so a change of the code
# reuses this layer. constraints.txt pins every package to the versions the tests ran with.
COPY pyproject.toml constraints.txt README.m[d] ./
# The placeholder package carries a version, which pyproject.toml reads from bridge/__init__.py.
# The build tree goes too: setuptools keeps a built file that is newer than its source, and the
# placeholder __init__.py is newer than the real one copied below.
RUN mkdir bridge && echo '__version__ = "0"' > bridge/__init__.py \
    && /opt/venv/bin/pip install -c constraints.txt . \
    && /opt/venv/bin/pip uninstall -y chorus-bridge \
    && rm -rf build bridge *.egg-info
COPY bridge ./bridge
RUN /opt/venv/bin/pip install --no-deps -c constraints.txt . \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin bridge
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /tmp
EXPOSE 8090
# slim images have no curl: ask /healthz with the interpreter that is there anyway.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8090/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["chorus-bridge"]
CMD ["run"]
