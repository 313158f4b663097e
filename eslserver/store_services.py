"""What one server runs for each store it serves: prices in, labels drawn, jobs out.

A server serves every store of its ``stores`` table (a chain on one system): stores are
data, added with ``esl stores add`` while the server runs, each with its own name, currency,
language, country, time zone and POS field map. For each, the server runs the same parts it
always ran for its one store (`Ingest`, `Pipeline`, `Dispatcher`, `Labels`), made with that
store's `Settings` (`settings_for`): the configured settings with the store's own values in
place of ``store``, ``store_name``, ``currency``, ``field_map``, ``language``, ``country`` and
``timezone``. The parts that are not a
store's (the database, the MQTT connection, the render processes, the key vault, templates,
identities, retention) are the server's, shared by all.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from eslserver.config import ConfigError, Settings
from eslserver.db.database import Database, Row
from eslserver.dispatch import Dispatcher, Publish
from eslserver.ingest import Ingest
from eslserver.keyvault import KeyVault
from eslserver.labels import Labels
from eslserver.metrics import Metrics
from eslserver.pipeline import Pipeline
from eslserver.topics import Topics
from eslserver.uploads import Uploads

__all__ = ["StoreServices", "StoreView", "settings_for"]


def settings_for(settings: Settings, row: Row | Mapping[str, Any]) -> Settings:
    """The server's `settings` with a store's own values (a row of ``stores``) in their place;
    `ConfigError` names the store and what does not fit."""
    try:
        field_map = json.loads(row["field_map"] or "{}")
        if not isinstance(field_map, dict):
            raise ValueError(f"field_map: expected a JSON object, got {type(field_map).__name__}")
        return dataclasses.replace(settings, store=row["id"], store_name=row["name"], currency=row["currency"],
                                   field_map=MappingProxyType({str(k): str(v) for k, v in field_map.items()}),
                                   language=row["language"], country=row["country"], timezone=row["timezone"])
    except (ConfigError, ValueError) as exc:
        raise ConfigError(f"store {row['id']!r}: {exc}") from exc


@dataclass
class StoreServices:
    """The parts that serve one store; `poke` them after a change of its labels."""

    settings: Settings
    ingest: Ingest
    pipeline: Pipeline
    dispatcher: Dispatcher
    labels: Labels
    uploads: Uploads

    @property
    def store(self) -> str:
        return self.settings.store

    @property
    def topics(self) -> Topics:
        return self.settings.topics

    @classmethod
    def make(cls, db: Database, settings: Settings, metrics: Metrics, *, vault: KeyVault, uploads: Uploads,
             publish: Publish, on_states: Callable[[Iterable[str]], None],
             on_prices: Callable[[int, int], None], on_change: Callable[[], None]) -> StoreServices:
        """The parts of the store of `settings`, wired to each other: a change that marks its
        labels dirty wakes its pipeline (and `on_change`, the server's scheduler), new jobs
        wake its dispatcher."""
        services: StoreServices

        def dirty() -> None:
            services.pipeline.poke()
            on_change()

        def jobs() -> None:
            services.dispatcher.poke()

        services = cls(
            settings=settings,
            ingest=Ingest(db, settings, metrics, on_dirty=dirty, on_result=on_prices),
            pipeline=Pipeline(db, settings, metrics, None, vault=vault, on_jobs=jobs, on_states=on_states,
                              uploads=uploads),
            dispatcher=Dispatcher(db, settings, metrics, publish, vault=vault, on_states=on_states, on_dirty=dirty),
            labels=Labels(db, settings, metrics, vault, on_dirty=dirty, on_jobs=jobs, on_states=on_states),
            uploads=uploads)
        return services

    def poke(self) -> None:
        self.pipeline.poke()
        self.dispatcher.poke()


class StoreView:
    """The server as the HTTP API sees it for one store of the chain (``/api/v1/stores/{store}/…``):
    that store's settings, labels, prices and uploads; everything else is the server's own."""

    def __init__(self, server: Any, services: StoreServices) -> None:
        self._server = server
        self._services = services

    @property
    def settings(self) -> Settings:
        return self._services.settings

    @property
    def labels(self) -> Labels:
        return self._services.labels

    @property
    def ingest(self) -> Ingest:
        return self._services.ingest

    @property
    def uploads(self) -> Uploads:
        return self._services.uploads

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)
