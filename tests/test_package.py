"""The package's public names: what ``import gateway`` offers, and what each module exports."""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import gateway

PUBLIC = ["Config", "ConfigError", "GatewayError", "create_app", "load_config", "parse_config"]


def test_the_public_names_are_pinned_and_each_is_its_home_modules() -> None:
    # Changing this list changes what users' code may import: say so in the CHANGELOG.
    assert sorted(gateway.__all__) == PUBLIC
    for name in PUBLIC:
        home = importlib.import_module(gateway._HOMES[name])
        assert getattr(gateway, name) is getattr(home, name)
        assert name in home.__all__


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Relay'"):
        gateway.Relay  # noqa: B018


def test_importing_the_package_does_not_pull_in_the_web_stack() -> None:
    code = "import sys, gateway; print('litestar' in sys.modules, 'aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_every_module_says_what_it_exports_and_has_it() -> None:
    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        if info.name == "gateway.__main__":
            continue
        module = importlib.import_module(info.name)
        exported = getattr(module, "__all__", None)
        if exported is None:  # a package may be only its docstring
            assert info.ispkg, f"{info.name} has no __all__"
            continue
        missing = [name for name in exported if not hasattr(module, name)]
        assert not missing, f"{info.name}.__all__ names what it lacks: {missing}"


def test_the_readmes_layout_is_the_tree_as_it_is() -> None:
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    listed: set[str] = set()
    parents: list[str] = []
    for line in block.splitlines()[1:]:
        match = re.match(r"( *)(\S+)", line)
        if match is None or match[2].startswith(("`", "(")) or len(match[1]) % 2:
            continue  # a description running on
        depth = len(match[1]) // 2
        del parents[depth:]
        path = "/".join([*parents, match[2].rstrip("/")])
        listed.add(path)
        if match[2].endswith("/"):
            parents.append(match[2].rstrip("/"))
    tree = {
        str(path.relative_to(root))
        for path in (*root.glob("src/gateway/**/*.py"), *root.glob("src/gateway/**/"))
        if path.name != "__init__.py" and "__pycache__" not in path.parts
    }
    in_readme = {p for p in listed if p.startswith("src/gateway") and "__init__" not in p}
    assert in_readme == tree
