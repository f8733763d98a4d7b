"""Cross-cutting HTTP concerns installed on the app: one JSON error shape (`{"detail": ...}`),
413 body limit, 429 per-key rate limit, CORS for LangGraph Studio (incl. Private Network Access).

INTERFACE (stable): `install_security(app, settings)` is called once by `create_app`.
No-op until implemented.
"""

from __future__ import annotations

from fastapi import FastAPI

from app.settings import Settings


def install_security(app: FastAPI, settings: Settings) -> None:
    return None
