"""A stand-in for clickhouse_driver.Client answered by ClickHouse 26.x's own engine, in process (chdb).

Only the socket is replaced.  Queries go to chdb as SQL and their results come back as
a Native block that the driver's own column readers decode; an INSERT's columnar data
is serialised by the driver's own block writer and column writers (with whatever
workers.clickhouse.native has installed) and handed to chdb as a Native block.  Both
ways the block is written at protocol revision 0: no BlockInfo and no per-column
custom-serialization byte, so the column payloads are the bytes a TCP insert sends at
the driver's revision.  What this cannot show: the TCP handshake and packets, settings
the server applies to a client's insert, and what the server sends as an INSERT's
sample block (the types are taken from system.columns, as jetsink reads them).
"""

from __future__ import annotations

import re
from io import BytesIO
from typing import Any, Sequence

from clickhouse_driver import defines
from clickhouse_driver import errors as ch
from clickhouse_driver.block import ColumnOrientedBlock
from clickhouse_driver.bufferedwriter import BufferedSocketWriter
from clickhouse_driver.connection import ServerInfo
from clickhouse_driver.context import Context
from clickhouse_driver.reader import read_binary_str
from clickhouse_driver.streams.native import BlockOutputStream
from clickhouse_driver.util.escape import escape_params
from clickhouse_driver.util.helpers import column_chunks
from clickhouse_driver.varint import read_varint

_CODE = re.compile(r"Code: (\d+)\.")
_INSERT = re.compile(r"INSERT INTO (?P<table>\S+) \((?P<columns>.*)\) VALUES\Z", re.S)
_IDENT = re.compile(r"`((?:[^`\\]|\\.)*)`")


class _Collect:
    """The socket BufferedSocketWriter flushes to: keeps the bytes."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.chunks.append(bytes(data))


class _Reader:
    """The part of the driver's BufferedReader its column readers use, over bytes."""

    def __init__(self, data: bytes) -> None:
        self.stream = BytesIO(data)

    def read(self, n: int) -> bytes:
        out = self.stream.read(n)
        if len(out) != n:
            raise EOFError("unexpected end of the Native block")
        return out

    def read_one(self) -> int:
        return self.read(1)[0]

    def read_strings(self, n: int, encoding: str | None = None) -> tuple:
        out = []
        for _ in range(n):
            size = read_varint(self)
            raw = self.read(size)
            out.append(raw if encoding is None else raw.decode(encoding))
        return tuple(out)

    def at_end(self) -> bool:
        return self.stream.tell() == len(self.stream.getbuffer())


def context(version: tuple[int, ...], zone: str, revision: int = 0) -> Context:
    """The driver's context of a connection to a server of ``version`` in ``zone`` at ``revision``."""
    ctx = Context()
    ctx.server_info = ServerInfo("ClickHouse", *version[:3], revision, zone, "chdb", revision)
    ctx.settings = {}
    ctx.client_settings = {
        "insert_block_size": defines.DEFAULT_INSERT_BLOCK_SIZE,
        "strings_as_bytes": False,
        "strings_encoding": defines.STRINGS_ENCODING,
        "use_numpy": False,
        "input_format_null_as_default": False,
        "namedtuple_as_json": False,
    }
    return ctx


def native_block(ctx: Context, columns_with_types: Sequence[tuple[str, str]], columns: list[list]) -> bytes:
    """The Native block the driver writes for columnar data (at the context's revision)."""
    sock = _Collect()
    fout = BufferedSocketWriter(sock, defines.BUFFER_SIZE)
    BlockOutputStream(fout, ctx).write(ColumnOrientedBlock(list(columns_with_types), columns, types_check=False))
    return b"".join(sock.chunks)


def read_native(ctx: Context, data: bytes) -> list[tuple]:
    """Rows of a Native output (revision 0: blocks without BlockInfo), decoded by the driver's readers."""
    from clickhouse_driver.columns.service import read_column

    buf = _Reader(data)
    rows: list[tuple] = []
    while not buf.at_end():
        n_columns = read_varint(buf)
        n_rows = read_varint(buf)
        columns = []
        for _ in range(n_columns):
            read_binary_str(buf)  # the name
            spec = read_binary_str(buf)
            columns.append(read_column(ctx, spec, n_rows, buf))
        rows.extend(zip(*columns, strict=True))
    return rows


def _server_error(exc: Exception) -> Exception:
    """chdb's error as the driver raises a server's: ServerException with its code (what faults.classify reads)."""
    m = _CODE.search(str(exc))
    return ch.ServerException(str(exc), code=int(m.group(1))) if m else exc


class ChdbClient:
    """``execute`` as clickhouse_driver.Client's, on a chdb session (the calls jetsink's sink makes)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        text = session.query("SELECT version(), timezone()", "TSV").bytes().decode().split()
        self.version = tuple(int(p) for p in re.findall(r"\d+", text[0])[:3])
        self.zone = text[1]
        self.inserts: list[bytes] = []  # every Native block sent, for byte comparisons

    def query(self, sql: str, fmt: str = "TSV") -> str:
        return self.session.query(sql, fmt).bytes().decode()

    def execute(self, query: str, params: Any = None, columnar: bool = False, types_check: bool = False,
                settings: dict | None = None, query_id: str | None = None) -> Any:
        ctx = context(self.version, self.zone)
        insert = _INSERT.match(query.strip())
        if insert is not None and params is not None:
            return self._insert(ctx, insert.group("table"), _IDENT.findall(insert.group("columns")), params, columnar)
        if params:
            query = query % escape_params(params, ctx)
        try:
            data = self.session.query(query, "Native").bytes()
        except Exception as exc:
            raise _server_error(exc) from None
        return read_native(ctx, data)

    def _insert(self, ctx: Context, table: str, names: list[str], data: list, columnar: bool) -> int:
        assert columnar, "jetsink inserts columnar data"
        db, name = (p.replace("\\`", "`") for p in _IDENT.findall(table))
        types = dict(self.execute(
            "SELECT name, type FROM system.columns WHERE database = %(db)s AND table = %(t)s", {"db": db, "t": name}
        ))
        with_types = [(n, types[n]) for n in names]
        inserted = 0
        for chunk in column_chunks(data, ctx.client_settings["insert_block_size"]):
            block = native_block(ctx, with_types, chunk)
            self.inserts.append(block)
            cols = ", ".join(f"`{n}`" for n in names)
            try:
                # Leaving the with block without finish() (the server refused the block) cancels the
                # insert; otherwise the session would refuse every later query.
                with self.session.send_insert(f"INSERT INTO {table} ({cols})", "Native") as inserter:
                    inserter.append(block)
                    inserter.finish()
            except Exception as exc:
                raise _server_error(exc) from None
            inserted += len(chunk[0]) if chunk else 0
        return inserted
