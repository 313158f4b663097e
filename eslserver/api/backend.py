"""`Backend`: what the HTTP API needs from the server it serves, and nothing more.

The handlers depend on this narrow interface instead of the concrete `eslserver.server.Server`,
so the API sits above the server's parts (database, labels, templates, ingest, metrics)
without importing the process that wires them: `Server` builds the application with
``create_app(self)`` and satisfies `Backend` structurally. A test or another host can serve
the same routes with any object that has these members.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # names for the type checker; importing the API loads none of these parts
    from eslserver.config import Settings
    from eslserver.db.database import Database
    from eslserver.ingest import Ingest
    from eslserver.label_templates import Templates
    from eslserver.labels import Labels
    from eslserver.metrics import Metrics
    from eslserver.store_services import StoreServices
    from eslserver.uploads import Uploads

__all__ = ["Backend", "BrokerLink"]


class BrokerLink(Protocol):
    """The MQTT connection as the health check sees it."""

    @property
    def is_connected(self) -> bool: ...


class Backend(Protocol):
    """The members the route handlers and the token guard use (all read-only to them)."""

    @property
    def settings(self) -> Settings:
        """The validated configuration (store id, currency, field map…)."""
        ...

    @property
    def db(self) -> Database:
        """The open database: committed reads, and transactions for the store operations."""
        ...

    @property
    def labels(self) -> Labels:
        """Binding, unbinding and flashing labels (audited, with their side effects)."""
        ...

    @property
    def templates(self) -> Templates:
        """Label templates: list, read, save with validation, previews and stored images."""
        ...

    @property
    def uploads(self) -> Uploads:
        """Images uploaded through the API: upload, list, read, delete."""
        ...

    @property
    def ingest(self) -> Ingest:
        """Price updates, validated and committed as the MQTT path does."""
        ...

    @property
    def stores(self) -> Mapping[str, StoreServices]:
        """What runs for each store served, by store id."""
        ...

    def for_store(self, store: str) -> Backend | None:
        """This server as it serves `store` of the chain (its settings, labels, prices and
        uploads); None when it serves no such store."""
        ...

    async def store_of_label(self, mac: str) -> str | None:
        """The store label `mac` belongs to; None for a label nobody knows."""
        ...

    @property
    def metrics(self) -> Metrics:
        """The Prometheus registry served at ``/metrics``."""
        ...

    @property
    def use_mqtt(self) -> bool:
        """False when the server runs without MQTT (health then says ``disabled``)."""
        ...

    @property
    def mqtt(self) -> BrokerLink | None:
        """The broker connection while one is open."""
        ...

    def watch(self) -> AsyncIterator[dict[str, Any]]:
        """Changes as they happen, for the live feed (see `eslserver.server.Server.watch`)."""
        ...
