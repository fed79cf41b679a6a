"""Which platform runs us, and whether what must outlive a deploy will.

On a PaaS the container's disk goes away at every deploy (and on Render's free plan at every
restart and spin-down). Two configurations lose data there without a word, so the start
speaks: a persistent database with no SESSION_ENCRYPTION_KEY keeps secrets sealed under a
key file that the next deploy deletes (refused: exit 2); SQLite on the container's own disk
loses everything (one WARNING at every start)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from config import ConfigError, Settings

# The variable each platform sets in every container it runs.
PLATFORM_MARKERS = (
    ("Render", ("RENDER", "RENDER_SERVICE_ID", "RENDER_EXTERNAL_URL")),
    ("Railway", ("RAILWAY_ENVIRONMENT_NAME", "RAILWAY_PROJECT_ID", "RAILWAY_SERVICE_ID")),
    ("Koyeb", ("KOYEB_APP_NAME", "KOYEB_SERVICE_NAME", "KOYEB_PUBLIC_DOMAIN")),
    ("Fly", ("FLY_APP_NAME", "FLY_MACHINE_ID")),
)


def detect_platform(environ: Mapping[str, str]) -> str | None:
    for name, markers in PLATFORM_MARKERS:
        if any(environ.get(marker) for marker in markers):
            return name
    return None


def uses_sqlite(settings: Settings) -> bool:
    return settings.sqlalchemy_url.startswith("sqlite")


def on_a_volume(path: Path, environ: Mapping[str, str]) -> bool:
    """A mount of its own below `/` (a platform volume); the container's root filesystem is
    what the next deploy replaces."""
    mounted = environ.get("RAILWAY_VOLUME_MOUNT_PATH")
    path = path.resolve()
    if mounted and (path == Path(mounted) or Path(mounted) in path.parents):
        return True
    for folder in (path, *path.parents):
        if folder.exists() and os.path.ismount(folder):
            return folder != Path("/")
    return False


def check_durable_keys(settings: Settings, environ: Mapping[str, str]) -> None:
    platform = detect_platform(environ)
    if platform is None or uses_sqlite(settings) or settings.session_encryption_key:
        return
    raise ConfigError(
        f"Invalid configuration: SESSION_ENCRYPTION_KEY is not set, and on {platform} the "
        "key file that would replace it is deleted at the next deploy while the database "
        "keeps what it sealed (webhook secrets, profile backups, dashboard sessions); set "
        "SESSION_ENCRYPTION_KEY to a long random string (e.g. `openssl rand -base64 32`)"
    )


def ephemeral_warning(settings: Settings, environ: Mapping[str, str]) -> str | None:
    platform = detect_platform(environ)
    if platform is None or not uses_sqlite(settings):
        return None
    if on_a_volume(settings.data_dir, environ):
        return None
    return (
        f"💥 On {platform} with SQLite in DATA_DIR={settings.data_dir}, on the container's own "
        "disk: the next deploy (on Render's free plan also a restart or spin-down) deletes "
        "every user, token, bot, WhatsApp link (the profiles and their backups), queued "
        "message and webhook. Set DATABASE_URL to a Postgres that outlives the container, "
        "or mount a volume at DATA_DIR"
    )
