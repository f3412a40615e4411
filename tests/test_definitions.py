"""The `python` tool: a ```python block of definitions merged into the file that holds them (the form a small
model answers in when asked directly), with imports, helpers and the rest of the file kept."""

from __future__ import annotations

import pytest

from agent_selfevolve.envs.base import ToolCall
from agent_selfevolve.envs.coding import CodingEnvironment
from agent_selfevolve.envs.definitions import DefinitionError, merge_definitions
from agent_selfevolve.tasks import Task

FILE = '''"""Module doc."""
import os


def helper(x):
    return x


@staticmethod_like
def target(a):
    """Doc."""
    raise NotImplementedError


CONSTANT = 3
'''


def test_a_definition_replaces_its_namesake_and_keeps_the_rest() -> None:
    code = "from typing import List\n\ndef target(a: List[int]) -> int:\n    return helper(sum(a))\n"
    merged = merge_definitions(code, {"pkg/mod.py": FILE, "other.py": "def unrelated():\n    pass\n"})
    assert merged.path == "pkg/mod.py" and merged.replaced == ["target"] and merged.added == []
    assert "raise NotImplementedError" not in merged.text and "@staticmethod_like" not in merged.text
    assert "return helper(sum(a))" in merged.text and "def helper(x)" in merged.text and "CONSTANT = 3" in merged.text
    lines = merged.text.splitlines()
    assert lines.index("from typing import List") == lines.index("import os") + 1  # after the file's imports


def test_new_definitions_are_added_beside_a_replaced_one() -> None:
    code = "def target(a):\n    return extra(a)\n\n\ndef extra(a):\n    return a + 1\n"
    merged = merge_definitions(code, {"m.py": FILE})
    assert merged.replaced == ["target"] and merged.added == ["extra"]
    namespace: dict = {"staticmethod_like": lambda f: f}
    exec(compile(merged.text, "m.py", "exec"), namespace)  # noqa: S102 (our own test module)
    assert namespace["target"](1) == 2


@pytest.mark.parametrize(("code", "files", "says"), [
    ("def target(:\n", {"m.py": FILE}, "does not parse"),
    ("x = 1\n", {"m.py": FILE}, "defines no function"),
    ("def nowhere():\n    pass\n", {"m.py": FILE}, "no file defines nowhere"),
    ("def target(a):\n    return a\n", {"a.py": FILE, "b.py": FILE}, "a.py, b.py all define target"),
])
def test_code_that_cannot_be_placed_is_refused_with_the_reason(code: str, files: dict, says: str) -> None:
    with pytest.raises(DefinitionError, match=says):
        merge_definitions(code, files)


def test_python_tool_writes_the_repository_file(demo_task: Task) -> None:
    env = CodingEnvironment(demo_task, "python-tool", tools=["python", "submit"])
    env.reset()
    assert env.path is not None
    before = (env.path / "calc.py").read_text()
    name = next(line.split("(")[0][4:] for line in before.splitlines() if line.startswith("def "))
    obs = env.step(ToolCall("python", {"code": f"def {name}(a, b):\n    return 42\n"}))
    assert not obs.error and f"replaced {name}" in obs.text, obs.text
    assert "return 42" in (env.path / "calc.py").read_text()
    assert env.step(ToolCall("python", {"code": "def nowhere():\n    pass\n"})).error
    env.close()


CLASS_FILE = '''class A:
    x = 1

    def f(self, a):
        return a - 1

    def g(self):
        return 2
'''


def test_a_method_given_alone_replaces_the_method_of_its_class_at_its_indentation() -> None:
    merged = merge_definitions("def f(self, a):\n    return a + 1\n", {"m.py": CLASS_FILE})
    assert merged.replaced == ["A.f"]
    assert "    def f(self, a):\n        return a + 1\n" in merged.text and "def g(self):" in merged.text
    indented = merge_definitions("    def g(self):\n        return 3\n", {"m.py": CLASS_FILE})  # copied indented
    assert "        return 3" in indented.text and "return a - 1" in indented.text


def test_a_class_given_with_only_the_fixed_method_keeps_the_others() -> None:
    merged = merge_definitions("class A:\n    def g(self):\n        return 3\n", {"m.py": CLASS_FILE})
    assert "return 3" in merged.text and "return a - 1" in merged.text and "x = 1" in merged.text


def test_a_method_two_classes_define_names_them_instead_of_guessing() -> None:
    other = CLASS_FILE.replace("class A", "class B")
    with pytest.raises(DefinitionError, match=r"m\.py \(A\).*n\.py \(B\)"):
        merge_definitions("def f(self, a):\n    return 0\n", {"m.py": CLASS_FILE, "n.py": other})
