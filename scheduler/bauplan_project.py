"""``bauplan_project.yml``: a Bauplan project's settings, as faas's own.

Read statically like the rest of a project. What faas takes from it: the project's name,
``defaults.python`` (version and packages, every function's defaults),
``defaults.namespace`` (where ``faas run`` reads and writes when no --namespace is given)
and ``parameters`` (``str``, ``int``, ``float``, ``bool`` with their defaults, ``required``
and ``description``; ``secret`` ones take their value from ``faas secret set``: a
Bauplan ciphertext is sealed with Bauplan's key, which faas does not have).
"""

from __future__ import annotations

from typing import Any

BAUPLAN_FILES = ("bauplan_project.yml", "bauplan_project.yaml")
PARAMETER_TYPES = ("str", "int", "float", "bool", "secret")


def bauplan_config(files: dict[str, str], problems: list[str]) -> dict[str, Any] | None:
    """The settings of the project's bauplan_project.yml (in the form faas_project.toml
    gives them), or None when it has none."""
    present = [name for name in BAUPLAN_FILES if name in files]
    if not present:
        return None
    if len(present) > 1:
        problems.append("both bauplan_project.yml and bauplan_project.yaml: keep one")
    path = present[0]
    import yaml

    try:
        data = yaml.safe_load(files[path]) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problems.append(f"{path}{line}: not YAML: {getattr(exc, 'problem', None) or exc}")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path}: must be a mapping (project:, parameters:, defaults:)")
        return {}
    project: dict[str, Any] = {}
    config: dict[str, Any] = {"project": project, "parameters": {}}
    section = data.get("project") or {}
    if isinstance(section, dict) and section.get("name") is not None:
        project["name"] = str(section["name"])
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        problems.append(f"{path}: defaults must be a mapping")
        defaults = {}
    python = defaults.get("python") or {}
    if isinstance(python, dict):
        if python.get("version") is not None:
            project["python"] = str(python["version"])
        packages = python.get("packages") or []
        pip = {}
        for p in packages if isinstance(packages, list) else [packages]:
            if not (isinstance(p, dict) and p.get("name") and p.get("version")):
                problems.append(f"{path}: defaults.python.packages: each needs a name and a "
                                f"version, not {p!r}")
                continue
            pip[str(p["name"])] = str(p["version"])
        if pip:
            project["pip"] = pip
    if defaults.get("namespace") is not None:
        project["namespace"] = str(defaults["namespace"])
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        problems.append(f"{path}: parameters must be a mapping of names to their settings")
        parameters = {}
    for name, decl in parameters.items():
        decl = decl if isinstance(decl, dict) else {}
        kind = str(decl.get("type", "str"))
        if kind not in PARAMETER_TYPES:
            problems.append(
                f"{path}: parameter {name!r} has type {kind!r}; faas takes "
                f"{', '.join(PARAMETER_TYPES)}" + (
                    " (a vault parameter lives in Bauplan's AWS account: store its value with "
                    "faas secret set and declare it type: secret)" if kind == "vault" else "")
            )
            continue
        entry = {k: decl[k] for k in ("required", "description") if k in decl}
        entry["type"] = kind
        if kind != "secret" and decl.get("default") is not None:
            entry["default"] = decl["default"]
        config["parameters"][str(name)] = entry
    return config
