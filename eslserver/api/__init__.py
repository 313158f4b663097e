"""The HTTP API (aiohttp): ``/api/v1`` JSON endpoints, ``/metrics``, ``/healthz``.

``create_app(server)`` builds the application for a `eslserver.api.backend.Backend` (the
running `eslserver.server.Server` passes itself; the API never imports it); the OpenAPI
document (`eslserver.api.openapi.document`) is served at ``/api/v1/openapi.json``.
"""

from eslserver.api.app import API_PREFIX, SERVER_KEY, all_routes, create_app
from eslserver.api.errors import ApiError

__all__ = ["create_app", "all_routes", "ApiError", "API_PREFIX", "SERVER_KEY"]
