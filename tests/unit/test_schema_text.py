"""workers/schema/text.py: String, FixedString, UUID, Enum, IPv4/IPv6 and their column fast paths."""

from __future__ import annotations

from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st
from schema_cases import (
    MODERN,
    assert_column_as_per_value,
    by_map_rows,
    conv,
    fast_column,
    per_value,
    rejects,
    typed,
)

from workers.clickhouse import native


def test_strings():
    assert conv("String")("héllo") == "héllo"
    rejects("String", 5, "wrong_type")
    rejects("String", ["a"], "wrong_type")
    assert conv("FixedString(4)")("abcd") == "abcd"
    assert conv("FixedString(4)")("ab") == "ab"
    assert conv("FixedString(4)")("éé") == "éé"  # 4 UTF-8 bytes
    rejects("FixedString(4)", "abcde", "out_of_range")
    rejects("FixedString(4)", "ééa", "out_of_range")  # 3 chars, 5 bytes
    rejects("FixedString(2)", "\ud800", "invalid_value")


def test_uuid_strictness():
    c = conv("UUID")
    u = c("6F1C2D9E-AB12-4000-8000-0000000000AB")
    assert u == UUID("6f1c2d9e-ab12-4000-8000-0000000000ab")
    assert isinstance(u, UUID)
    assert hash(u) == hash(UUID(str(u)))
    assert str(u) == "6f1c2d9e-ab12-4000-8000-0000000000ab"
    for bad in [
        "{6f1c2d9e-ab12-4000-8000-0000000000ab}",
        "6f1c2d9eab1240008000000000000000ab"[:32],
        "urn:uuid:6f1c2d9e-ab12-4000-8000-0000000000ab",
        "6f1c2d9e-ab12-4000-8000-0000000000a",
        "6f1c2d9e-ab12-4000-8000-0000000000abc",
        "6f1c2d9e-ab12-4000-8000_0000000000ab",
        "6f1c_d9e-ab12-4000-8000-0000000000ab",
        " 6f1c2d9-ab12-4000-8000-0000000000ab",
        "6f1c2d9e-ab12-4000-8000-00000000000g",
    ]:
        rejects("UUID", bad, "invalid_value")
    rejects("UUID", 5, "wrong_type")


def test_enum():
    t = "Enum8('low' = -1, 'mid\\'s' = 0, 'high' = 5)"
    c = conv(t)
    assert c("low") == "low"
    assert c("mid's") == "mid's"
    assert c(5) == "high"
    assert c(-1) == "low"
    rejects(t, "LOW", "invalid_value")
    rejects(t, 3, "invalid_value")
    rejects(t, True, "wrong_type")


def test_ip_addresses():
    assert conv("IPv4")("10.1.2.3") == 0x0A010203
    for bad in ["010.1.2.3", "10.1.2", "10.1.2.3.4", "256.1.1.1", "::1", " 10.1.2.3", "0x0a.1.2.3", "10.1.2.3/8"]:
        rejects("IPv4", bad, "invalid_value")
    rejects("IPv4", 167837955, "wrong_type")
    assert conv("IPv6")("2001:db8::1") == bytes.fromhex("20010db8000000000000000000000001")
    assert conv("IPv6")("::ffff:1.2.3.4") == bytes.fromhex("00000000000000000000ffff01020304")
    for bad in ["1.2.3.4", "fe80::1%eth0", "2001:db8::1::", "2001:db8::g"]:
        rejects("IPv6", bad, "invalid_value")


UUIDS = [
    "6f1c2d9e-ab12-4000-8000-0000000000ab",
    "6F1C2D9E-AB12-4000-8000-0000000000AB",
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "0123abcd-EF01-4567-89ab-CDEF01234567",
]


BAD_UUIDS = [
    "{6f1c2d9e-ab12-4000-8000-0000000000ab}",
    "6f1c2d9eab1240008000000000000000",
    "6f1c2d9e-ab12-4000-8000-0000000000a",
    "6f1c2d9e-ab12-4000-8000-0000000000abc",
    "6f1c2d9e-ab12-4000-8000_0000000000ab",
    "6f1c_d9e-ab12-4000-8000-0000000000ab",
    " 6f1c2d9-ab12-4000-8000-0000000000ab",
    "6f1c2d9e-ab12-4000-8000-00000000000g",
    "6f1c2d9e-ab12-4000-8000-0000000000a\n",
    "6f1c2d9e\nab12-4000-8000-0000000000ab",
    "+f1c2d9e-ab12-4000-8000-0000000000ab",
    "0x1c2d9e-ab12-4000-8000-0000000000ab",
    "\uff16f1c2d9e-ab12-4000-8000-0000000000ab",
    "6f1c2d9e-ab12-4000-8000-0000000000ab\n6f1c2d9e-ab12-4000-8000-0000000000ab",
    "6f1c2d9e-ab12-4000-8000-00000000 0ab",
    "6f1c2d9e-ab12-4000-8000-  0000000000",
    "6f1c2d9e-ab12-4000-8000-0000000000\t\t",
    "6f1c2d9e-ab12-4000-8000-0000000000\x0b\x0c",
    "\r\n1c2d9e-ab12-4000-8000-0000000000ab",
    "6f1c2d9e-ab12-4000-8000-00000-0000ab",
    "",
    5,
    None,
    ["6f1c2d9e-ab12-4000-8000-0000000000ab"],
]


@pytest.fixture(params=["uuid-objects", "packed"])
def uuid_writer(request):
    """The column fast path makes UUID objects for the driver's own writer, and packed values
    (native.pack_uuids) when jetsink's writers are installed, as in a worker."""
    was = native.installed()
    (native.install if request.param == "packed" else native.uninstall)()
    yield request.param
    (native.install if was else native.uninstall)()


def as_uuid(v):
    return native.unpack_uuid(v) if type(v) is bytes else v


def test_uuid_column_fast_path_is_the_per_value_converter(uuid_writer):
    fast = fast_column("UUID", UUIDS)
    assert {type(u) for u in fast} == ({bytes} if uuid_writer == "packed" else {UUID})
    fast = list(map(as_uuid, fast))
    assert fast == [UUID(u) for u in UUIDS]
    assert [typed(u) for u in fast] == [typed(UUID(u)) for u in UUIDS]
    assert_column_as_per_value("UUID", UUIDS, BAD_UUIDS, normal=as_uuid)
    assert_column_as_per_value("Nullable(UUID)", UUIDS, [None, "nope"], normal=as_uuid)
    for bad in BAD_UUIDS:
        assert fast_column("UUID", [UUIDS[0], bad]) is None
        assert fast_column("UUID", [bad] * 3) is None


@pytest.mark.parametrize("writer", ["uuid-objects", "packed"])
@given(st.lists(st.uuids().map(str) | st.text(alphabet="0123456789abcdefABCDEF-\n_x ", min_size=30, max_size=40),
                min_size=1, max_size=6))
def test_uuid_column_fast_path_property(writer, column):
    was = native.installed()
    (native.install if writer == "packed" else native.uninstall)()
    try:
        assert by_map_rows("UUID", column, normal=as_uuid) == per_value("UUID", column)
    finally:
        (native.install if was else native.uninstall)()


def test_fixed_string_column_fast_path_is_the_per_value_converter():
    good = ["DE", "FR", "", "a", "é", "  "]
    bad = ["abc", "éé", "€", "a€", "\ud800", "\x00\x00\x00", 5, None, ["DE"]]
    assert fast_column("FixedString(2)", ["DE", "", "a"]) == ["DE", "", "a"]
    assert_column_as_per_value("FixedString(2)", good, bad)
    assert_column_as_per_value("FixedString(3)", [*good, "€", "abc"], ["abcd", "é€"])
    assert_column_as_per_value("LowCardinality(FixedString(2))", good, bad)
    for b in ["abc", "é", 5, None]:
        assert fast_column("FixedString(2)", ["DE", b]) is None  # non-ASCII text is measured value by value


def test_objects_as_strings_store_the_compact_json_text():
    from workers.clickhouse.schema import TableColumn, compile_mapper

    columns = [TableColumn("s", "String"), TableColumn("a", "Array(String)"), TableColumn("n", "Nullable(String)"),
               TableColumn("m", "Map(String, String)")]
    mapper = compile_mapper("t", columns, [], MODERN, objects_as_strings=True)
    doc = {"s": {"b": [1, 2.5, None, True], "a": "é"}, "a": ["x", {"k": []}, [1]], "n": [], "m": {"k": {"z": 1}}}
    cols, failures = mapper.map_rows([doc, {"s": "plain", "a": [], "n": None, "m": {}}])
    assert failures == []
    assert cols == [
        ['{"b":[1,2.5,null,true],"a":"é"}', "plain"],
        [["x", '{"k":[]}', "[1]"], []],
        ["[]", None],
        [{"k": '{"z":1}'}, {}],
    ]
    _, failures = mapper.map_rows([{"s": 5}, {"s": None}, {"s": True}])
    assert [e.reason for _, e in failures] == ["wrong_type"] * 3  # numbers and booleans are not text


def test_without_objects_as_strings_an_object_is_wrong_type():
    assert "got JSON object" in rejects("String", {"a": 1}, "wrong_type")
    assert "got JSON array" in rejects("Array(String)", [["x"]], "wrong_type")
