"""Cache keys (scheduler/dag.py) and code hashes (scheduler/reader.py), as pure functions.

Projects are in-memory files; the catalog is a fake ``lookup`` whose snapshot ids
the tests choose.
"""

from __future__ import annotations

import re

import msgspec
import pyarrow as pa
import pytest

from faas.protocol.messages import ObjectInput, ScanInput
from faas.scheduler.dag import (
    CACHE_KEY_PROPERTY,
    Plan,
    PlanNode,
    SourceTable,
    assign_cache_keys,
    build_plan,
    cache_key,
)
from faas.scheduler.reader import read_project
from tests.unit.scheduler.test_planner import src

pytestmark = pytest.mark.timeout(30)

SCHEMAS = {
    "raw.t": pa.schema([("x", pa.int64()), ("y", pa.int64())]),
    "raw.u": pa.schema([("z", pa.string())]),
}
SNAPSHOTS = {"raw.t": 11, "raw.u": 22}

# a -> b -> c, and d on its own; all in one module, with a helper and a constant.
MODELS = src("""
    import faas

    RATE = 2


    def helper(x):
        return x * RATE


    @faas.model()
    def a(t=faas.Model("raw.t", columns=["x"], filter="x > 0")):
        return t


    @faas.model()
    def b(a=faas.Model("a")):
        return helper(a)


    @faas.model()
    def c(b=faas.Model("b", columns=["x"]), year=faas.Parameter("year")):
        return b


    @faas.model()
    def d(u=faas.Model("raw.u")):
        return u
    """)

# The same code, laid out differently: comments, blank lines, spacing, indentation, quotes.
REFORMATTED = src("""
    # models of the test project
    import faas
    RATE   =   2  # the rate
    def helper( x ):
      # doubles
      return x*RATE
    @faas.model( )
    def a(t = faas.Model('raw.t', columns = [ 'x' ], filter = 'x > 0')):



      return t  # unchanged
    @faas.model()
    def b(a=faas.Model("a"),):
      return helper( a )
    @faas.model()
    def c(
        b=faas.Model("b", columns=["x",]),
        year=faas.Parameter("year"),
    ):
        return (b)
    @faas.model()
    def d(u=faas.Model("raw.u")):
        # nothing to do
        return u
    """)

PARAMS = {"year": "2024"}


def lookup_with(snapshots: dict[str, int | None] | None = None):  # type: ignore[no-untyped-def]
    snaps: dict[str, int | None] = {**SNAPSHOTS, **(snapshots or {})}

    def lookup(key: str) -> SourceTable | None:
        if key not in SCHEMAS:
            return None
        return SourceTable(
            key=key, metadata_location=f"file:///wh/{key.replace('.', '/')}/metadata/v1.json",
            snapshot_id=snaps[key], schema=SCHEMAS[key],
        )

    return lookup


def make_plan(
    files: dict[str, str] | str = MODELS, *, snapshots: dict[str, int | None] | None = None,
    params: dict[str, str] | None = None, salt: str = "", toml: str | None = None,
) -> Plan:
    if isinstance(files, str):
        files = {"models.py": files}
    if toml is not None:
        files = {**files, "faas_project.toml": toml}
    return build_plan(
        read_project(files), "ns", "main", PARAMS if params is None else params,
        lookup_with(snapshots), salt=salt,
    )


def keys(files: dict[str, str] | str = MODELS, **kw) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {name: node.cache_key for name, node in make_plan(files, **kw).nodes.items()}


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    assert set(before) == set(after)
    return {n for n in before if before[n] != after[n]}


# --------------------------------------------------------------------------- stable, ids, salt


def test_same_project_planned_twice_has_the_same_keys() -> None:
    first, second = make_plan(), make_plan()
    k1 = {n: node.cache_key for n, node in first.nodes.items()}
    k2 = {n: node.cache_key for n, node in second.nodes.items()}
    assert set(k1) == {"a", "b", "c", "d"}
    assert k1 == k2
    assert len(set(k1.values())) == 4  # every node has its own key
    for key in k1.values():
        assert re.fullmatch(r"[0-9a-f]{32}", key)


def test_object_ids_are_the_keys_without_salt() -> None:
    p = make_plan()
    for name, node in p.nodes.items():
        assert node.object_id == node.cache_key, name
        for i in node.inputs:
            if isinstance(i, ObjectInput):
                assert i.object_id == p.nodes[i.node].object_id == p.nodes[i.node].cache_key


def test_salt_makes_object_ids_differ_from_keys_and_inputs_follow() -> None:
    plain = make_plan()
    salted = make_plan(salt="run1")
    other = make_plan(salt="run2")
    for name, node in salted.nodes.items():
        assert node.cache_key == plain.nodes[name].cache_key  # the key itself is not salted
        assert node.object_id != node.cache_key
        assert node.object_id != other.nodes[name].object_id
    consumers = 0
    for node in salted.nodes.values():
        for i in node.inputs:
            if isinstance(i, ObjectInput):
                consumers += 1
                assert i.object_id == salted.nodes[i.node].object_id
                assert i.object_id != salted.nodes[i.node].cache_key
    assert consumers == 2  # b reads a, c reads b
    # Scan inputs carry no object id.
    assert all(not isinstance(i, ObjectInput) for i in salted.nodes["a"].inputs)


def test_assign_cache_keys_again_is_idempotent() -> None:
    p = make_plan()
    before = {n: (node.cache_key, node.object_id) for n, node in p.nodes.items()}
    assign_cache_keys(p)
    assert {n: (node.cache_key, node.object_id) for n, node in p.nodes.items()} == before


def test_describe_carries_cache_key() -> None:
    p = make_plan(salt="s")
    described = msgspec.to_builtins(p.describe())
    assert [d["name"] for d in described] == p.order
    for d in described:
        node = p.nodes[str(d["name"])]
        assert d["cache_key"] == node.cache_key
        assert d["cache_key"] != node.object_id


def test_cache_key_property_name() -> None:
    # Stored in published snapshots' summaries: renaming it forgets every published key.
    assert CACHE_KEY_PROPERTY == "faas.cache-key"


# --------------------------------------------------------------------------- code


def test_reformatting_changes_no_key() -> None:
    assert REFORMATTED != MODELS
    assert keys(REFORMATTED) == keys(MODELS)


def test_code_hash_ignores_layout_but_sees_code() -> None:
    plain = {m.name: m.code_hash for m in read_project({"models.py": MODELS}).models}
    layout = {m.name: m.code_hash for m in read_project({"models.py": REFORMATTED}).models}
    assert plain == layout
    assert all(plain.values()) and len(set(plain.values())) == 4


def test_changing_a_model_body_changes_it_and_downstream_only() -> None:
    before = keys()
    after = keys(MODELS.replace("return helper(a)", "return helper(a) + 1"))
    assert changed(before, after) == {"b", "c"}


def test_changing_the_first_model_changes_the_whole_chain_but_not_d() -> None:
    before = keys()
    after = keys(MODELS.replace("    return t\n", "    return t.slice(1)\n"))
    assert changed(before, after) == {"a", "b", "c"}


def test_changing_an_unrelated_model_changes_only_it() -> None:
    before = keys()
    after = keys(MODELS.replace("    return u\n", "    return u.slice(0)\n"))
    assert changed(before, after) == {"d"}


def test_renaming_a_model_function_argument_changes_its_key() -> None:
    before = keys()
    text = MODELS.replace("def d(u=faas.Model(\"raw.u\")):\n    return u", "def d(v=faas.Model(\"raw.u\")):\n    return v")
    assert text != MODELS
    assert changed(before, keys(text)) == {"d"}


def test_changing_a_helper_function_changes_every_key() -> None:
    before = keys()
    after = keys(MODELS.replace("return x * RATE", "return x * RATE * 1"))
    assert changed(before, after) == {"a", "b", "c", "d"}


def test_changing_a_module_constant_changes_every_key() -> None:
    before = keys()
    after = keys(MODELS.replace("RATE = 2", "RATE = 3"))
    assert changed(before, after) == {"a", "b", "c", "d"}


def test_changing_a_helper_in_another_module_changes_every_key() -> None:
    files = {"models.py": MODELS, "util.py": "def f():\n    return 1\n"}
    before = keys(files)
    after = keys({**files, "util.py": "def f():\n    return 2\n"})
    assert changed(before, after) == {"a", "b", "c", "d"}
    # ... but not its layout.
    assert keys({**files, "util.py": "# util\n\ndef f( ):\n  return 1\n"}) == before


# --------------------------------------------------------------------------- inputs, params, env


def test_source_snapshot_changes_readers_and_downstream_only() -> None:
    before = keys()
    assert changed(before, keys(snapshots={"raw.t": 12})) == {"a", "b", "c"}
    assert changed(before, keys(snapshots={"raw.u": 23})) == {"d"}


def test_table_without_snapshot_is_keyed_by_its_metadata() -> None:
    before = keys()
    empty = keys(snapshots={"raw.u": None})
    assert changed(before, empty) == {"d"}
    assert keys(snapshots={"raw.u": None}) == empty


def _rekey(node: PlanNode, upstream: dict[str, str], **changes: object) -> str:
    """The node's key with its first input changed (nothing else)."""
    first = msgspec.structs.replace(node.inputs[0], **changes)
    probe = PlanNode(
        spec=node.spec, key=node.key, inputs=[first, *node.inputs[1:]], deps=node.deps,
        params=dict(node.params),
    )
    return cache_key(probe, upstream)


def test_scan_input_columns_and_filter_are_in_the_key() -> None:
    p = make_plan()
    node = p.nodes["a"]
    scan = node.inputs[0]
    assert isinstance(scan, ScanInput) and scan.columns == ["x"] and scan.filter == "x > 0"
    assert cache_key(node, {}) == node.cache_key  # recomputing gives the same key
    assert _rekey(node, {}) == node.cache_key
    assert _rekey(node, {}, columns=["x", "y"]) != node.cache_key
    assert _rekey(node, {}, columns=None) != node.cache_key
    assert _rekey(node, {}, filter="x > 1") != node.cache_key
    assert _rekey(node, {}, filter=None) != node.cache_key
    assert _rekey(node, {}, snapshot_id=12) != node.cache_key
    assert _rekey(node, {}, key="raw.other") != node.cache_key


def test_object_input_columns_filter_and_upstream_key_are_in_the_key() -> None:
    p = make_plan()
    upstream = {n: p.nodes[n].cache_key for n in p.order}
    node = p.nodes["c"]
    inp = node.inputs[0]
    assert isinstance(inp, ObjectInput) and inp.node == "b" and inp.columns == ["x"]
    assert cache_key(node, upstream) == node.cache_key
    assert _rekey(node, upstream, columns=None) != node.cache_key
    assert _rekey(node, upstream, filter="x > 0") != node.cache_key
    assert cache_key(node, {**upstream, "b": "0" * 32}) != node.cache_key


def test_columns_and_filter_in_source_change_the_key() -> None:
    before = keys()
    assert changed(before, keys(MODELS.replace('columns=["x"], filter', 'columns=["x", "y"], filter'))) \
        == {"a", "b", "c"}
    assert changed(before, keys(MODELS.replace('filter="x > 0"', 'filter="x > 5"'))) == {"a", "b", "c"}
    assert changed(before, keys(MODELS.replace('faas.Model("b", columns=["x"])', 'faas.Model("b")'))) \
        == {"c"}


def test_parameter_values_change_the_key_of_their_node() -> None:
    before = keys()
    assert make_plan().nodes["c"].params == {"year": "2024"}
    assert changed(before, keys(params={"year": "2025"})) == {"c"}
    assert keys(params={"year": "2024"}) == before


def test_typed_parameter_default_vs_value() -> None:
    toml = '[parameters.year]\ntype = "int"\ndefault = 2024\n'
    by_default = keys(params={}, toml=toml)
    assert keys(params={"year": "2024"}, toml=toml) == by_default
    assert changed(by_default, keys(params={"year": "2023"}, toml=toml)) == {"c"}


def test_python_version_changes_every_key() -> None:
    base = keys(toml='[project]\npython = "3.11"\n')
    assert changed(base, keys(toml='[project]\npython = "3.12"\n')) == {"a", "b", "c", "d"}
    assert changed(keys(), base) == {"a", "b", "c", "d"}  # no version vs a version


def test_pip_pins_change_every_key() -> None:
    base = keys(toml='[project.pip]\npolars = "1.0"\n')
    assert changed(base, keys(toml='[project.pip]\npolars = "1.1"\n')) == {"a", "b", "c", "d"}
    assert changed(base, keys(toml='[project.pip]\npolars = "1.0"\nnumpy = "2.0"\n')) \
        == {"a", "b", "c", "d"}
    # Pins are a mapping: their order in the file does not matter.
    assert keys(toml='[project.pip]\nnumpy = "2.0"\npolars = "1.0"\n') \
        == keys(toml='[project.pip]\npolars = "1.0"\nnumpy = "2.0"\n')


def test_per_model_environment_changes_its_key() -> None:
    with_env = MODELS.replace(
        "@faas.model()\ndef d(", '@faas.model()\n@faas.python("3.11", pip={"polars": "1.0"})\ndef d('
    )
    assert with_env != MODELS
    other_pin = with_env.replace('"polars": "1.0"', '"polars": "1.1"')
    base = keys(with_env)
    assert changed(keys(), base) == {"d"}
    assert changed(base, keys(other_pin)) == {"d"}
    assert make_plan(other_pin).nodes["d"].spec.pip == {"polars": "1.1"}


# --------------------------------------------------------------------------- SQL


def test_sql_model_key_changes_with_its_text() -> None:
    files = {"models.py": MODELS, "q.sql": "SELECT x FROM raw.t"}
    before = keys(files)
    after = keys({**files, "q.sql": "SELECT x FROM raw.t WHERE x > 1"})
    assert changed(before, after) == {"q"}
    assert keys(dict(files)) == before


def test_sql_model_downstream_of_a_python_model() -> None:
    files = {"models.py": MODELS, "q.sql": "SELECT * FROM b"}
    before = keys(files)
    assert make_plan(files).nodes["q"].deps == ["b"]
    after = keys({**files, "models.py": MODELS.replace("return helper(a)", "return helper(a) + 1")})
    assert changed(before, after) == {"b", "c", "q"}
    assert changed(before, keys(files, snapshots={"raw.t": 99})) == {"a", "b", "c", "q"}


def test_sql_model_key_changes_with_its_parameter() -> None:
    files = {"q.sql": "SELECT x FROM raw.t WHERE x > $lim"}
    k1 = keys(files, params={"lim": "1"})
    k2 = keys(files, params={"lim": "2"})
    assert changed(k1, k2) == {"q"}


# --------------------------------------------------------------------------- cache=False


def test_uncached_model_gets_a_new_key_every_plan_and_so_does_downstream() -> None:
    text = MODELS.replace("@faas.model()\ndef b(", "@faas.model(cache=False)\ndef b(")
    assert text != MODELS
    assert make_plan(text).nodes["b"].spec.cache is False
    assert make_plan(text).nodes["a"].spec.cache is True
    plans = [keys(text) for _ in range(3)]
    # b and what reads it (c) change every time; a (upstream) and d (unrelated) never do.
    assert changed(plans[0], plans[1]) == {"b", "c"}
    assert changed(plans[1], plans[2]) == {"b", "c"}
    assert changed(plans[0], plans[2]) == {"b", "c"}
    assert plans[0]["a"] == keys()["a"] and plans[0]["d"] == keys()["d"]
    for k in plans[0].values():
        assert re.fullmatch(r"[0-9a-f]{32}", k)


def test_uncached_model_at_the_root_changes_its_whole_chain_only() -> None:
    text = MODELS.replace("@faas.model()\ndef a(", "@faas.model(cache=False)\ndef a(")
    assert text != MODELS
    assert changed(keys(text), keys(text)) == {"a", "b", "c"}


def test_uncached_model_changes_a_sql_model_reading_it() -> None:
    text = MODELS.replace("@faas.model()\ndef b(", "@faas.model(cache=False)\ndef b(")
    files = {"models.py": text, "q.sql": "SELECT * FROM b", "r.sql": "SELECT * FROM d"}
    assert changed(keys(files), keys(files)) == {"b", "c", "q"}


def test_cache_true_is_the_default() -> None:
    text = MODELS.replace("@faas.model()\ndef b(", "@faas.model(cache=True)\ndef b(")
    assert text != MODELS
    assert keys(text) == keys(text)


# --------------------------------------------------------------------------- faas_project.toml


def test_any_project_setting_changes_every_key() -> None:
    files = {"models.py": MODELS, "q.sql": "SELECT x FROM raw.t"}
    base = keys(files, toml='[project]\nname = "sales"\n')
    assert changed(base, keys(files, toml='[project]\nname = "sales2"\n')) == {"a", "b", "c", "d", "q"}
    # No file vs a file with a name.
    assert changed(keys(files), base) == {"a", "b", "c", "d", "q"}
    # An unrelated table of its own too.
    assert changed(base, keys(files, toml='[project]\nname = "sales"\n[extra]\nk = 1\n')) \
        == {"a", "b", "c", "d", "q"}


def test_reordering_or_reformatting_project_settings_changes_no_key() -> None:
    files = {"models.py": MODELS, "q.sql": "SELECT x FROM raw.t"}
    one = (
        '[project]\nname = "sales"\npython = "3.11"\n\n'
        '[project.pip]\npolars = "1.0"\nnumpy = "2.0"\n\n'
        '[parameters.year]\ntype = "int"\ndefault = 2024\n'
    )
    other = (
        '# settings\n[parameters.year]\ndefault = 2024\ntype   =   "int"\n\n'
        "[project]\npython = '3.11'\n  name = \"sales\"  # the name\n"
        "pip = { numpy = '2.0', polars = '1.0' }\n"
    )
    assert one != other
    assert keys(files, toml=other) == keys(files, toml=one)
    # ... while a real change to any setting (here a default that --param overrides, so
    # no parameter value changes) changes every key.
    assert changed(keys(files, toml=one), keys(files, toml=one.replace("2024", "2023"))) \
        == {"a", "b", "c", "d", "q"}


# --------------------------------------------------------------------------- models calling models

CALLS = src("""
    import faas


    @faas.model()
    def base(t=faas.Model("raw.t")):
        return t


    @faas.model()
    def caller(t=faas.Model("raw.t")):
        return base(t)


    @faas.model()
    def bystander(u=faas.Model("raw.u")):
        return u
    """)


def _change_base_body(text: str) -> str:
    old = 'def base(t=faas.Model("raw.t")):\n    return t\n'
    assert text.count(old) == 1
    return text.replace(old, 'def base(t=faas.Model("raw.t")):\n    return t.slice(1)\n')


def test_model_calling_another_models_function_follows_its_body() -> None:
    before = keys(CALLS, params={})
    assert make_plan(CALLS, params={}).nodes["caller"].deps == []  # no data edge: code only
    after = keys(_change_base_body(CALLS), params={})
    assert changed(before, after) == {"base", "caller"}


def test_model_calling_another_model_ignores_its_layout() -> None:
    before = keys(CALLS, params={})
    relaid = CALLS.replace('def base(t=faas.Model("raw.t")):\n    return t\n',
                           "def base( t = faas.Model('raw.t') ):\n    # same\n    return (t)\n")
    assert relaid != CALLS
    assert keys(relaid, params={}) == before


def test_model_calling_a_model_that_calls_a_model_follows_both() -> None:
    # 'outer' calls caller(), which calls base(): base's body changes what outer returns,
    # so it is part of outer's code hash, however deep the calls go (else a stale cached
    # output of 'outer' would be reused).
    text = CALLS + src("""


        @faas.model()
        def outer(t=faas.Model("raw.t")):
            return caller(t)
        """)
    before = keys(text, params={})
    after = keys(_change_base_body(text), params={})
    assert changed(before, after) == {"base", "caller", "outer"}


def test_model_calling_a_model_function_of_another_module_follows_its_body() -> None:
    # A model function imported from another module and called is part of the caller's
    # code hash too: its body changes, the caller's key changes.
    lib = src("""
        import faas


        @faas.model()
        def base(t=faas.Model("raw.t")):
            return t
        """)
    user = src("""
        import faas
        from lib import base


        @faas.model()
        def caller(t=faas.Model("raw.t")):
            return base(t)
        """)
    before = keys({"lib.py": lib, "user.py": user}, params={})
    after = keys({"lib.py": _change_base_body(lib), "user.py": user}, params={})
    assert changed(before, after) == {"base", "caller"}
