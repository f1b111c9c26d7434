"""Every test written is one pytest collects: a `test_*` function at the top of a `test_*.py` module, or a method of
a class there whose name begins with `Test`, or of a shared class (a contract) that such a class subclasses. A `def
test_` anywhere else (inside a helper, after its `return`) would never run, on any backend."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def _modules() -> dict[str, ast.Module]:
    return {path.name: ast.parse(path.read_text(), str(path)) for path in sorted(TESTS.glob("*.py"))}


def _tests_in(node: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [
        n
        for n in ast.walk(node)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")
    ]


def misplaced(name: str, module: ast.Module, collected_bases: set[str]) -> list[str]:
    """The `test_*` functions of module `name` that pytest does not collect, given the names of the shared classes
    that some `Test*` class subclasses."""
    is_test_module = name.startswith("test_")
    placed = {id(n) for n in module.body} if is_test_module else set()
    for cls in (n for n in module.body if isinstance(n, ast.ClassDef)):
        if (is_test_module and cls.name.startswith("Test")) or cls.name in collected_bases:
            placed |= {id(n) for n in cls.body}
    return [f"{name}:{n.lineno} {n.name}" for n in _tests_in(module) if id(n) not in placed]


def collected_bases(modules: dict[str, ast.Module]) -> set[str]:
    """The names of the classes that a `Test*` class of a `test_*.py` module subclasses."""
    return {
        base.id
        for name, module in modules.items()
        if name.startswith("test_")
        for cls in module.body
        if isinstance(cls, ast.ClassDef) and cls.name.startswith("Test")
        for base in cls.bases
        if isinstance(base, ast.Name)
    }


def test_every_test_function_is_collected() -> None:
    modules = _modules()
    bases = collected_bases(modules)
    assert "StreamStoreContract" in bases  # the contract suite runs, by the backends' test classes
    assert [where for name, module in modules.items() for where in misplaced(name, module, bases)] == []


def test_a_test_inside_a_helper_or_an_unused_contract_is_found() -> None:
    """The shape the prune contract test once had: defined inside a helper function, after its `return`."""
    source = """
class Contract:
    async def test_kept(self) -> None: ...

class Forgotten:
    async def test_in_a_class_nothing_subclasses(self) -> None: ...

def _helper() -> int:
    return 1

    async def test_after_the_return(self) -> None: ...
"""
    module = ast.parse(source)
    assert misplaced("streams_contract.py", module, {"Contract"}) == [
        "streams_contract.py:6 test_in_a_class_nothing_subclasses",
        "streams_contract.py:11 test_after_the_return",
    ]
    assert misplaced("test_backend.py", ast.parse("class Helper:\n    def test_x(self) -> None: ...\n"), set()) == [
        "test_backend.py:2 test_x"
    ]
