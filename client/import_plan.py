"""Import plans as TOML files a person edits (``faas table import --plan`` / ``--apply``).

    # faas import plan for shop.orders: 3 files
    [columns.code]
    type = "string"                 # what the column is imported as: edit it
    fill = false                    # true: files without the column give nulls
    seen = { int64 = ["part-1.csv"], string = ["part-2.csv"] }
    missing = []

Only ``type`` and ``fill`` are read back; ``seen`` and ``missing`` say what the files hold.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from faas.protocol.errors import InvalidInput
from faas.protocol.messages import PlanColumn
from faas.protocol.replies import ImportPlan

HEADER = """\
# faas import plan for {key}: {files} files.
# For each column: `type` is what it is imported as (int64, double, string, bool,
# date32[day], timestamp[us], ...) and `fill = true` gives nulls in the files without it.
# `seen` (the types in the files, and which files) and `missing` only inform: edit `type`
# and `fill`, then: faas table import {key} FILES --apply {plan}
"""


def _quote(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text, ensure_ascii=False)


def write_plan(plan: ImportPlan, path: Path) -> None:
    lines = [HEADER.format(key=plan.key, files=len(plan.files), plan=path.name)]
    for c in plan.columns:
        seen = ", ".join(f"{_quote(t)} = [{', '.join(_quote(f) for f in files)}]"
                         for t, files in c.seen.items())
        lines += [
            f"[columns.{_quote(c.name)}]",
            f"type = {_quote(c.type)}",
            f"fill = {'true' if c.fill else 'false'}",
            f"seen = {{ {seen} }}",
            f"missing = [{', '.join(_quote(f) for f in c.missing)}]",
            "",
        ]
    path.write_text("\n".join(lines))


def read_plan(path: Path) -> list[PlanColumn]:
    """The columns' types and fills from an edited plan; one line naming the file and the
    column when it is not a plan."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise InvalidInput(f"cannot read the plan {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{path} is not TOML: {exc}") from None
    columns = data.get("columns")
    if not isinstance(columns, dict) or not columns:
        raise InvalidInput(f"{path} has no [columns.NAME] tables: write one with --plan")
    out = []
    for name, spec in columns.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
            raise InvalidInput(f"{path}: column {name!r} needs type = \"...\"")
        fill = spec.get("fill", False)
        if not isinstance(fill, bool):
            raise InvalidInput(f"{path}: column {name!r}: fill is true or false")
        out.append(PlanColumn(name=name, type=spec["type"], fill=fill))
    return out
