"""Read queries compiled to SQL once and run many times (the HL7 order hot path).

On the order path Django spends ~0.3-0.5 ms building and compiling each lookup that the
database then answers in ~0.03 ms (bench/bench_mllp.py; a message makes several). A
`CompiledQuery` is written with the ORM as usual, with named values; it is compiled once per
database connection vendor, and each run only swaps the values into the stored SQL.

Only for fixed-shape read queries whose values are plain strings or integers: each value is
bound through a unique sentinel, found again in the compiled parameters (a value the ORM
transforms, e.g. `__iexact` or a date, would not be found, and the query refuses to compile).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import connection
from django.db.models import Model, QuerySet


class CompiledQuery:
    def __init__(self, build: Callable[..., QuerySet], **kinds: type) -> None:
        """`build(**values)` returns the query; `kinds` names each value and its type (str or int)."""
        self._build = build
        self._kinds = kinds
        self._compiled: dict[str, tuple[str, list[tuple[str | None, Any]], type[Model]]] = {}

    def _compile(self) -> tuple[str, list[tuple[str | None, Any]], type[Model]]:
        sentinels = {
            name: f"\x1fcompiled:{name}\x1f" if kind is str else -(7_000_000_000 + i)
            for i, (name, kind) in enumerate(self._kinds.items())
        }
        queryset = self._build(**sentinels)
        sql, params = queryset.query.sql_with_params()
        by_value = {value: name for name, value in sentinels.items()}
        slots = [(by_value[p], None) if p in by_value else (None, p) for p in params]
        missing = set(sentinels) - {name for name, _ in slots}
        if missing:
            raise ValueError(f"values not found in the compiled query: {sorted(missing)}")
        return sql, slots, queryset.model

    def _prepared(self, values: dict[str, Any]) -> tuple[str, list[Any], type[Model]]:
        compiled = self._compiled.get(connection.vendor)
        if compiled is None:
            compiled = self._compiled[connection.vendor] = self._compile()
        sql, slots, model = compiled
        return sql, [values[name] if name else constant for name, constant in slots], model

    def rows(self, **values: Any) -> list[tuple]:
        """The result rows as tuples (for a values_list() query)."""
        sql, params, _ = self._prepared(values)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()

    def first(self, **values: Any) -> Model | None:
        """The first model instance of the result (for a query of model instances), or None.
        Built by Manager.raw(), which applies the backend's converters (dates on SQLite)."""
        sql, params, model = self._prepared(values)
        return next(iter(model.objects.raw(sql, params)), None)
