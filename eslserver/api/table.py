"""`all_routes()`: the route table, every endpoint the application serves.

Kept apart from `eslserver.api.app` so that the OpenAPI document (which documents exactly
these routes) and the application (which serves them) both read it without importing each
other.
"""

from __future__ import annotations

from eslserver.api import (
    routes_images, routes_labels, routes_live, routes_misc, routes_prices, routes_products, routes_tech,
    routes_templates,
)
from eslserver.api.routing import Route

__all__ = ["all_routes"]


def all_routes() -> tuple[Route, ...]:
    """Every route the application serves (the OpenAPI document documents exactly these)."""
    # images after labels: GET /images/{hash}.png (rendered labels) is tried before /images/{digest}
    plain = (*routes_prices.ROUTES, *routes_products.ROUTES, *routes_labels.ROUTES, *routes_images.ROUTES,
             *routes_templates.ROUTES, *routes_misc.ROUTES, *routes_tech.ROUTES, *routes_live.ROUTES)
    # a store's routes once more for every store of the chain: /api/v1/stores/{store}/…
    return (*plain, *(route.scoped() for route in plain if route.chain is None))
