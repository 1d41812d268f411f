"""A table's schema + the pipeline's column overrides -> :class:`ColumnMapper`, compiled once.

:meth:`ColumnMapper.map_rows` turns parsed JSON documents into the columnar lists
clickhouse-driver inserts, whole columns at a time where it can (the fast paths of
converter.Converter), value by value where a column holds something to refuse.

``null`` for a non-Nullable column is a "wrong_type" error, never a default:
only an absent field is "missing".  A missing field is filled, in order, by:
the override's ``required`` (-> "missing_required"), the override's default
(converted at compile time), the column's constant DEFAULT (the value the
caller evaluated into ``constant_defaults``, in the form clickhouse-driver
returns for ``SELECT CAST(expr AS type)`` and passed through unchanged), the
server (a DEFAULT or EPHEMERAL column whose expression is not constant, such as
``now()`` or ``length(raw)``: the row is marked ``OMITTED`` there, and the rows
are inserted in groups by the columns they omit, see ``omission_groups``, as
ClickHouse's own JSON input fills omitted fields), None for Nullable columns,
else the type's zero value.  A constant DEFAULT wins over Nullable's None because it is what
ClickHouse itself would store for an omitted column.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from itertools import compress, repeat
from operator import itemgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from workers.clickhouse.schema.builder import compile_type
from workers.clickhouse.schema.errors import MappingError, Rejected, SchemaError, json_kind, show
from workers.clickhouse.schema.features import ServerFeatures
from workers.clickhouse.schema.sources import compile_source, refusing

if TYPE_CHECKING:  # only its attributes are read
    from workers.settings import ColumnOverride


@dataclass(frozen=True)
class DefaultText:
    """A constant DEFAULT as the server's text of it (a string, or lists of strings, or None),
    which the column's converter reads: exact where the driver's own reading of the value is not."""

    value: Any


@dataclass(frozen=True)
class LeftOut:
    """A column the mapper does not insert, and what a document that carries its field is told."""

    name: str
    reason: str  # the dead-letter reason for such a document
    detail: str


@dataclass(frozen=True)
class Unsupported:
    """A column whose type jetsink cannot insert: the server fills it (its DEFAULT, or NULL)."""

    name: str
    type: str
    why: str


@dataclass(frozen=True)
class TableColumn:
    """One row of ``system.columns`` for the target table."""

    name: str
    type: str
    default_kind: str = ""
    default_expression: str = ""


_MISSING = object()


class _Omitted:
    def __repr__(self) -> str:
        return "OMITTED"


# A row's value of a column the server fills per row (its DEFAULT is not constant): not inserted.
OMITTED = _Omitted()
_STR_OR_NULL = frozenset({str, type(None)})
_DICT = frozenset({dict})


@dataclass(frozen=True)
class _Plan:
    """How one inserted column is filled from a document."""

    name: str
    type: str
    path: tuple[str, ...]
    convert: Callable[[Any], Any]
    fast: tuple | None
    column: Callable[[list], list | None] | None
    dedupe_strings: bool
    missing_value: Any
    missing_error: tuple[str, str] | None  # (reason, detail) when an absent field is an error
    # Where a metadata column's values come from (workers/clickhouse/schema/sources.py): messages -> values.
    source: Callable[[Sequence[tuple]], list] | None = None
    emitted: bool = False  # the source's values are what the driver writes: not converted
    source_kind: str = "json"


def _walker(path: tuple[str, ...]) -> Callable[[Any], Any]:
    def walk(doc: Any) -> Any:
        for k in path:
            if type(doc) is not dict:
                return _MISSING
            doc = doc.get(k, _MISSING)
            if doc is _MISSING:
                return _MISSING
        return doc

    return walk


class ColumnMapper:
    """Maps parsed JSON documents to the columnar lists of one table's insertable columns."""

    def __init__(
        self,
        table: str,
        plans: Sequence[_Plan],
        left_out: Sequence[LeftOut],
        unknown_keys: "_UnknownKeys | None" = None,
        unsupported: Sequence[Unsupported] = (),
        all_columns: Sequence[str] = (),
    ):
        self.table = table
        self.all_columns = tuple(all_columns)  # every column of the table, inserted or not
        # Columns a row may leave to the server (OMITTED there): a batch is inserted in groups by them.
        self.omittable = tuple(i for i, p in enumerate(plans) if p.missing_value is OMITTED)
        self._plans = tuple(plans)
        # Columns left to the server (a non-constant DEFAULT, a type jetsink cannot insert);
        # a document carrying one is refused rather than silently losing the value.
        self._left_out = tuple(left_out)
        self._unknown_keys = unknown_keys  # None: keys that match no column are ignored
        self.unsupported = tuple(unsupported)
        self.column_names: tuple[str, ...] = tuple(p.name for p in self._plans)
        self.column_types: tuple[str, ...] = tuple(p.type for p in self._plans)
        # Metadata columns: filled from the messages, not the documents (map_rows needs `msgs`).
        self.sources: dict[str, str] = {p.name: p.source_kind for p in self._plans if p.source is not None}
        # The top-level keys the columns read, fetched together in one pass over the
        # documents (one itemgetter call per document, not one dict.get per column).
        self._top_keys = tuple(dict.fromkeys(p.path[0] for p in self._plans if p.source is None))
        self._get_top = itemgetter(*self._top_keys) if len(self._top_keys) > 1 else None
        # Top-level keys known to the table (read by a column, or a column's name) or already found
        # to match none: a key outside them is new, and may be a column added since the table was read.
        self._known_keys = frozenset(self._top_keys) | {out.name for out in self._left_out}
        self._seen_keys = self._known_keys

    def __repr__(self) -> str:
        return f"ColumnMapper({self.table!r}, columns={list(self.column_names)})"

    def new_keys(self, docs: Sequence[Any]) -> set[str]:
        """The top-level keys of `docs` that are new: no column reads them, and none was reported before.

        One C-level superset test per document when every key is known (the common case)."""
        seen = self._seen_keys
        try:
            if all(map(seen.issuperset, docs)):  # a document that is no object fails it (or raises)
                return set()
        except TypeError:
            pass
        return {k for d in docs if type(d) is dict for k in d if k not in seen}

    def forget_settled_keys(self) -> None:
        """Keys found to match no column become new again: the next batch carrying one reads the table
        (a column may have been added for a key that was already flowing)."""
        self._seen_keys = self._known_keys

    def settle_keys(self, keys: set[str], limit: int = 1000) -> bool:
        """Keys a fresh read of the table found to match no column: not new any more.
        False when more than `limit` are known so (keys that are data, not names): stop looking."""
        self._seen_keys = self._seen_keys | keys
        return len(self._seen_keys) - len(self._known_keys) <= limit

    def map_rows(
        self, docs: Sequence[Any], msgs: Sequence[tuple] | None = None,
    ) -> tuple[list[list], list[tuple[int, MappingError]]]:
        """Columns (one list per ``column_names`` entry, good docs in order) and (doc index, error) failures.

        `msgs`: the messages the documents came from, in the same order; needed when a column's
        value comes from the message (``sources``)."""
        columns, failures, _ = self._map(docs, msgs)
        return columns, failures

    def map_batch(
        self, docs: Sequence[Any], msgs: Sequence[tuple] | None = None,
    ) -> tuple[list[list], list[tuple[int, MappingError]], set[str]]:
        """``map_rows`` and ``new_keys`` of the same documents in one.

        When every document has exactly the top-level keys the columns read (found while
        mapping: each has them all, and as many keys as that), none can be new, and their
        keys are not looked at again (a length per document instead of a lookup per key)."""
        docs = docs if isinstance(docs, list) else list(docs)
        columns, failures, exact = self._map(docs, msgs)
        return columns, failures, (set() if exact else self.new_keys(docs))

    def _map(
        self, docs: Sequence[Any], msgs: Sequence[tuple] | None,
    ) -> tuple[list[list], list[tuple[int, MappingError]], bool]:
        """map_rows, and whether every document is an object with exactly the keys of ``_top_keys``."""
        docs = docs if isinstance(docs, list) else list(docs)
        failures: list[tuple[int, MappingError]] = []
        if set(map(type, docs)) <= {dict}:
            objs, origin = docs, None
        else:
            objs, origin = [], []
            for i, d in enumerate(docs):
                if isinstance(d, dict):
                    objs.append(d)
                    origin.append(i)
                else:
                    failures.append(
                        (i, MappingError("wrong_type", f"message is a JSON {json_kind(d)}, expected an object"))
                    )
        n = len(objs)
        if n == 0:
            return [[] for _ in self._plans], failures, False

        bad: dict[int, MappingError] = {}  # position in objs -> first error, in column order
        for out in self._left_out:
            if any(map(dict.__contains__, objs, repeat(out.name))):
                for i, d in enumerate(objs):
                    if out.name in d and i not in bad:
                        bad[i] = MappingError(out.reason, out.detail)
        # Only exact dicts (all of orjson's) go through itemgetter: it would honour a
        # subclass's __getitem__ (a defaultdict's, say), which dict.get never calls.
        top = self._top_fields(objs) if origin is None else None
        if self.sources:
            if msgs is None:
                raise ValueError(f"{self.table}: columns {', '.join(self.sources)} are filled from the messages; "
                                 "map_rows needs them")
            objs_msgs = msgs if origin is None else [msgs[i] for i in origin]
            columns = [
                self._column(plan, self._values(plan, objs, top), bad) if plan.source is None
                else (plan.source(objs_msgs) if plan.emitted else self._column(plan, plan.source(objs_msgs), bad))
                for plan in self._plans
            ]
        else:
            columns = [self._column(plan, self._values(plan, objs, top), bad) for plan in self._plans]
        if self._unknown_keys is not None:
            self._unknown_keys.check(objs, bad)

        if bad:
            keep = [i not in bad for i in range(n)]
            columns = [list(compress(col, keep)) for col in columns]
            for i, err in bad.items():
                failures.append((i if origin is None else origin[i], err))
            failures.sort(key=lambda f: f[0])
        # Every document has every key of _top_keys (top is not None); with no more keys than that, no other.
        exact = top is not None and set(map(len, objs)) == {len(self._top_keys)}
        return columns, failures, exact

    def _top_fields(self, objs: list) -> dict[str, tuple] | None:
        """Every top-level key's values, if every document has every key (else None)."""
        if self._get_top is None:
            return None
        try:
            return dict(zip(self._top_keys, zip(*map(self._get_top, objs), strict=False), strict=False))
        except KeyError:
            return None

    @staticmethod
    def _values(plan: _Plan, objs: list, top: dict[str, tuple] | None) -> list:
        """The field of every document, _MISSING where absent."""
        if top is not None:
            values = list(top[plan.path[0]])
        else:
            values = list(map(dict.get, objs, repeat(plan.path[0]), repeat(_MISSING)))
        # A dotted path level by level, in C, while every level is an object.
        for k in plan.path[1:]:
            if not set(map(type, values)) <= _DICT:
                return list(map(_walker(plan.path), objs))
            values = list(map(dict.get, values, repeat(k), repeat(_MISSING)))
        return values

    @staticmethod
    def _column(plan: _Plan, values: list, bad: dict[int, MappingError]) -> list:
        convert = plan.convert
        fast = plan.fast
        if fast is not None:
            # Whole-column validation in C: allowed exact types and (for numbers) min/max in range.
            if set(map(type, values)) <= fast[0] and (
                fast[1] is None or (min(values) >= fast[1] and max(values) <= fast[2])
            ):
                return values
        elif plan.column is not None:
            done = plan.column(values)
            if done is not None:
                return done
        if fast is None and plan.dedupe_strings and set(map(type, values)) <= _STR_OR_NULL:
            # Only str/None: equal keys are equal values (unlike 1 == 1.0 == True).
            distinct = set(values)
            if len(distinct) * 2 <= len(values):  # else the lookup table costs more than it saves
                try:
                    converted = {v: convert(v) for v in distinct}
                    return list(map(converted.__getitem__, values))
                except Rejected:
                    pass
        try:
            return list(map(convert, values))
        except Rejected:
            pass  # a missing field or a bad value: redo this column value by value

        out = values
        for i, v in enumerate(values):
            if v is _MISSING:
                if plan.missing_error is None:
                    out[i] = plan.missing_value
                    continue
                if i not in bad:
                    bad[i] = MappingError(*plan.missing_error)
                out[i] = None
                continue
            try:
                out[i] = convert(v)
            except Rejected as e:
                if i not in bad:
                    bad[i] = MappingError(e.reason, f"column {plan.name}{e.where}: {e.message}")
                out[i] = None
        return out


class _UnknownKeys:
    """Refuses documents carrying a key that no inserted column reads (pipeline ``unknown_keys: dead_letter``).

    ``known`` is the tree of the columns' paths: a key maps to None where a column takes
    its whole value, or to the keys read inside it where paths go deeper.
    """

    def __init__(self, table: str, known: dict):
        self.table = table
        self.known = known
        self.top = frozenset(known)
        self.flat = all(v is None for v in known.values())

    def check(self, objs: list, bad: dict[int, MappingError]) -> None:
        # One C-level superset test per document answers the common, flat case.
        for i, ok in enumerate(map(self.top.issuperset, objs)):
            if i in bad or (ok and self.flat):
                continue
            key = self._first_unknown(objs[i], self.known, "")
            if key is not None:
                bad[i] = MappingError(
                    "unknown_key",
                    f"key {key!r} matches no column of {self.table} (the pipeline's unknown_keys is dead_letter)",
                )

    def _first_unknown(self, obj: dict, known: dict, prefix: str) -> str | None:
        for k, v in obj.items():
            if k not in known:
                return prefix + k
            inner = known[k]
            if inner is not None and type(v) is dict:
                found = self._first_unknown(v, inner, f"{prefix}{k}.")
                if found is not None:
                    return found
        return None


def _key_tree(paths: Sequence[tuple[str, ...]]) -> dict:
    tree: dict = {}
    for path in sorted(paths, key=len):  # a column taking a whole object wins over deeper paths
        node: dict | None = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
            if node is None:
                break
        else:
            node[path[-1]] = None
    return tree


_INSERTABLE_KINDS = ("", "DEFAULT", "EPHEMERAL")
_COMPUTED_KINDS = ("MATERIALIZED", "ALIAS")


def compile_mapper(
    table: str,
    columns: Sequence[TableColumn],
    overrides: Sequence["ColumnOverride"],
    features: ServerFeatures,
    constant_defaults: Mapping[str, Any] = MappingProxyType({}),
    unknown_keys: str = "ignore",
    server_timezone: str | None = None,
    writable: Callable[[str, list], str | None] | None = None,
    objects_as_strings: bool = False,
    shared_overrides: Sequence["ColumnOverride"] = (),
    subject: str = "events.*",
    partitions: int = 1,
) -> ColumnMapper:
    """Compile the strict mapping of JSON documents onto ``table`` (raises SchemaError listing every problem).

    ``columns`` are the table's ``system.columns`` rows in table order;
    ``overrides`` are duck-typed ColumnOverride objects (column, path, required,
    has_default, default, epoch_unit, timezone); ``constant_defaults`` maps columns whose
    DEFAULT is a constant to its value as clickhouse-driver returns it.  ``unknown_keys``
    is the pipeline's "ignore" | "dead_letter"; ``server_timezone`` reads date-times
    without offset in columns that declare no zone, as the server itself does.

    A column whose type cannot be inserted (jetsink has no converter for it, or
    ``writable(type, values)``, the client library's answer, says why it cannot write it)
    is left to the server when it has a DEFAULT or is Nullable (listed in the mapper's
    ``unsupported``; a document carrying its field is refused as ``unsupported_type``),
    and is a problem otherwise.  An override naming it is always a problem.
    ``objects_as_strings`` is the pipeline's: String columns take JSON objects and arrays as their text.
    ``shared_overrides`` (a routed pipeline's own ``columns``) apply where the table has the column
    and ``overrides`` (the route's) name none; an override whose ``source`` is not json reads the
    message (sources.py), which needs the pipeline's ``subject`` and ``partitions``.
    """
    problems: list[str] = []
    if unknown_keys not in ("ignore", "dead_letter"):
        problems.append(f"table {table}: unknown_keys must be 'ignore' or 'dead_letter', got {unknown_keys!r}")
    by_name = {c.name: c for c in columns}
    own = {o.column for o in overrides}
    overrides = list(overrides) + [o for o in shared_overrides if o.column in by_name and o.column not in own]
    override_of: dict[str, Any] = {}
    for o in overrides:
        name = o.column
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            available = ", ".join(by_name) or "(none)"
            problems.append(f"table {table}: override names unknown column {name!r}{hint} (columns: {available})")
        elif name in override_of:
            problems.append(f"table {table} column {name}: more than one override")
        elif by_name[name].default_kind in _COMPUTED_KINDS:
            problems.append(
                f"table {table} column {name}: is {by_name[name].default_kind} (computed by the server) "
                "and cannot be given an override"
            )
        else:
            override_of[name] = o

    plans: list[_Plan] = []
    left_out: list[LeftOut] = []
    unsupported: list[Unsupported] = []
    for col in columns:
        where = f"table {table} column {col.name}"
        kind = col.default_kind or ""
        if kind in _COMPUTED_KINDS:
            continue
        if kind not in _INSERTABLE_KINDS:
            problems.append(f"{where}: unknown default kind {kind!r}")
            continue
        o = override_of.get(col.name)
        epoch_unit = getattr(o, "epoch_unit", "s") if o is not None else "s"
        if epoch_unit not in ("s", "ms"):
            problems.append(f"{where}: epoch_unit must be 's' or 'ms', got {epoch_unit!r}")
            epoch_unit = "s"
        try:
            timezone = getattr(o, "timezone", None) if o is not None else None
            conv = compile_type(col.type, features, epoch_unit, where, timezone, server_timezone, objects_as_strings)
            why = None if writable is None else writable(col.type, [conv.zero])
            if why is not None:
                raise SchemaError(f"{where}: type {col.type}: the client library cannot write it ({why})")
        except SchemaError as e:
            if o is not None:  # the column was asked for by name: it must work
                problems.extend(e.problems)
                continue
            why = "; ".join(p.removeprefix(f"{where}: ") for p in e.problems)
            if kind in ("DEFAULT", "EPHEMERAL") or _nullable(col.type):
                unsupported.append(Unsupported(col.name, col.type, why))
                left_out.append(LeftOut(
                    col.name, "unsupported_type",
                    f"column {col.name}: the field is sent, but jetsink cannot insert {col.type} ({why}); "
                    "the column is left to the server",
                ))
            else:
                problems.append(
                    f"{where}: {why}; it has no DEFAULT and is not Nullable, so no row can be inserted without it"
                )
            continue
        # EPHEMERAL columns exist to be inserted into (other columns' DEFAULTs read them): they take
        # the message's value. A DEFAULT the server computes per row takes it too, and rows without
        # it leave the column to the server (OMITTED).
        server_default = bool(col.default_expression) and col.name not in constant_defaults

        path = tuple(getattr(o, "path", None) or ()) if o is not None else ()
        if not path:
            path = (col.name,)
        source = None
        if o is not None and getattr(o, "source", "json") != "json":
            try:
                source = compile_source(o, col.type, where, subject, partitions, _MISSING)
            except SchemaError as e:
                problems.extend(e.problems)
                continue
            path = (f"<{o.source}>",)
        missing_value: Any = None
        missing_error: tuple[str, str] | None = None
        shown_path = ".".join(path) if source is None else f"{o.source} value"
        if o is not None and getattr(o, "required", False):
            missing_error = ("missing_required", f"column {col.name}: required field {shown_path!r} is missing")
        elif o is not None and getattr(o, "has_default", False):
            try:
                missing_value = conv.convert(getattr(o, "default", None))
            except Rejected as e:
                problems.append(f"{where}: default {show(getattr(o, 'default', None))}{e.where}: {e.message}")
        elif kind in ("DEFAULT", "EPHEMERAL") and col.name in constant_defaults:
            missing_value = constant_defaults[col.name]
            if type(missing_value) is DefaultText:
                try:
                    missing_value = conv.convert(missing_value.value)
                except Rejected as e:
                    problems.append(f"{where}: DEFAULT {col.default_expression} ({show(missing_value.value)})"
                                    f"{e.where}: {e.message}")
        elif server_default:
            missing_value = OMITTED  # the server's DEFAULT for that row: the row is inserted without the column
        else:
            missing_value = conv.zero  # None for Nullable columns

        plans.append(
            _Plan(
                name=col.name,
                type=col.type,
                path=path,
                convert=conv.convert if source is None else refusing(conv.convert),
                fast=conv.fast,
                column=conv.column,
                dedupe_strings=conv.dedupe_strings,
                missing_value=missing_value,
                missing_error=missing_error,
                source=None if source is None else source.values,
                emitted=source is not None and source.emitted,
                source_kind="json" if source is None else source.kind,
            )
        )

    if not plans and not problems:
        why = "".join(f"; column {u.name} {u.why}" for u in unsupported)
        problems.append(f"table {table}: has no column that can be inserted{why}")
    if problems:
        raise SchemaError(problems)
    checker = None
    if unknown_keys == "dead_letter":
        paths = [p.path for p in plans if p.source is None] + [(out.name,) for out in left_out]
        checker = _UnknownKeys(table, _key_tree(paths))
    return ColumnMapper(table, plans, left_out, checker, unsupported, all_columns=tuple(by_name))


@dataclass(frozen=True)
class OmissionGroup:
    """Rows of a batch that leave the same columns to the server, and the columns they are inserted with."""

    tag: str  # "" for the rows that omit nothing; else names the omitted columns (for the insert's identity)
    names: tuple[str, ...]
    types: tuple[str, ...]
    columns: list[list]
    rows: list[int]  # their positions in the batch's columns


def omission_groups(mapper: ColumnMapper, columns: list[list]) -> list[OmissionGroup] | None:
    """The batch's rows grouped by the columns they leave to the server (OMITTED); None when no row omits any.

    The groups and their order depend only on the batch, so a batch sent again is the same inserts."""
    omitted = [i for i in mapper.omittable if any(v is OMITTED for v in columns[i])]
    if not omitted:
        return None
    n = len(columns[0]) if columns else 0
    by_mask: dict[tuple[int, ...], list[int]] = {}
    for r in range(n):
        by_mask.setdefault(tuple(i for i in omitted if columns[i][r] is OMITTED), []).append(r)
    groups = []
    for mask in sorted(by_mask, key=lambda m: (len(m), m)):
        rows = by_mask[mask]
        keep = [i for i in range(len(columns)) if i not in mask]
        tag = "" if not mask else hashlib.sha1(",".join(mapper.column_names[i] for i in mask).encode()).hexdigest()[:8]
        groups.append(OmissionGroup(
            tag, tuple(mapper.column_names[i] for i in keep), tuple(mapper.column_types[i] for i in keep),
            [[columns[i][r] for r in rows] for i in keep], rows,
        ))
    return groups


def _nullable(type_text: str) -> bool:
    """Whether an omitted column of this type holds "no value" (NULL, an empty object), not a made-up one."""
    return type_text.startswith(("Nullable(", "LowCardinality(Nullable(", "Variant(", "Dynamic", "JSON", "Object("))
