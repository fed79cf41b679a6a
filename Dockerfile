# wakeful: Starlette + uvicorn service that keeps itself awake.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Debian's chromium headless shell (what the bot engine runs: under half the memory of the
# full browser per bot) plus a basic font set. wakeful finds it by itself. libatomic1: the
# Node inside Playwright's driver links against it (without it no bot can start: `make
# image-check` names it).
RUN apt-get update \
    && apt-get install -y --no-install-recommends chromium-headless-shell fonts-liberation \
       libatomic1 \
    && rm -rf /var/lib/apt/lists/*

# Unprivileged runtime user.
RUN groupadd --system --gid 10001 wakeful \
    && useradd --system --uid 10001 --gid wakeful --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin wakeful

WORKDIR /app

# Dependencies first, in their own layer, so code edits don't reinstall them.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); print('\n'.join(p['project'].get('dependencies', [])))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Application code (flat layout: server.py, config.py, services/, bot/, web/, migrations/),
# run from /app by the CMD, so it is not pip-installed a second time into site-packages.
# See .dockerignore for what is left out (tests, benches, scripts).
COPY . .
# The app's own bytecode, compiled once here: the runtime user cannot write /app (and
# PYTHONDONTWRITEBYTECODE is set), so otherwise every start compiles it again (slower to a
# passing /health, ~1 MB more of the server's memory kept from the compiler's work).
RUN python -m compileall -q /app \
    && mkdir -p /app/data \
    && chown -R wakeful:wakeful /app/data

ENV HOST=0.0.0.0 \
    PORT=8000 \
    DATA_DIR=/app/data

USER wakeful
EXPOSE 8000

# Shell form so ${PORT} is expanded at run time (Railway/Render override PORT).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:${PORT}/health', timeout=4); sys.exit(0 if r.status == 200 else 1)" || exit 1

CMD ["python", "server.py"]
