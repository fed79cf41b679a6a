"""Engines drive one chat account each; the manager only knows `base.Engine`.

BOT_ENGINE picks one: `whatsapp` (the Playwright driver), or `package.module:factory` for
an engine of your own (the tests use this for a scripted engine).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from loguru import logger

from bot.engines.base import Engine
from config import ConfigError, Settings
from services.database import Database

log = logger.bind(component="bot")


EngineFactory = Callable[..., Engine]


def engine_factory(settings: Settings) -> EngineFactory | None:
    """Resolve BOT_ENGINE without starting anything (a bad value is a ConfigError)."""
    name = settings.bot_engine.strip()
    if name == "none":
        return None
    if name == "whatsapp":
        module = importlib.import_module("bot.engines.whatsapp.driver")
        factory: Any = module.create_engine
    else:
        module_name, _, attribute = name.partition(":")
        if not attribute:
            raise ConfigError(
                f"Invalid configuration: BOT_ENGINE='{name}': expected 'whatsapp', 'none' or "
                "'package.module:factory'"
            )
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"Invalid configuration: BOT_ENGINE='{name}': cannot be loaded ({exc})"
            ) from None
    if not callable(factory):
        raise ConfigError(f"Invalid configuration: BOT_ENGINE='{name}' is not callable")
    resolved: EngineFactory = factory
    return resolved


def load_engine(settings: Settings, db: Database | None = None) -> Engine | None:
    factory = engine_factory(settings)
    if factory is None:
        return None
    if settings.bot_engine.strip() == "whatsapp":
        # The WhatsApp engine keeps profile backups in the database.
        engine: Engine = factory(settings, db)
    else:
        engine = factory(settings)
    describe = getattr(engine, "describe", None)
    log.info("Bot engine: {}{}", engine.name, f" ({describe()})" if describe else "")
    return engine
