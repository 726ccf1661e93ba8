"""The retrieval service: an HTTP JSON API (`/v1`), Prometheus metrics and a sketch page over one opened engine.

`create_app(engine)` builds the FastAPI application; the engine (models + index) is opened by the caller, once,
so importing this package loads no model. `s2m serve` opens the engine and runs the app with uvicorn.
May import: `errors`, `data`, `model`, `query`, `storage`.
"""

from s2m_retrieval.service.app import ServiceLimits, create_app

__all__ = ["ServiceLimits", "create_app"]
