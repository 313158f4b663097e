"""The web UI: sign-in, dashboard, virtual shelf, template editor, products.

Static HTML, CSS and JavaScript (no build step, no third-party code) served by the API's own
aiohttp application at ``/ui/``; every number and image comes from the HTTP API.
"""

from eslserver.web.routes import UI_PREFIX, setup_web

__all__ = ["UI_PREFIX", "setup_web"]
