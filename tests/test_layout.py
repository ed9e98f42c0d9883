"""The package's shape: files that hold one idea (at most 400 lines) and no import circle."""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), os.pardir, "spurjax")


def _modules():
  for base, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(base, f)
        rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
        yield (rel[:-len(".__init__")] if rel.endswith(".__init__") else rel), path


MODULES = dict(_modules())


def _top_level_imports(name: str, path: str) -> set:
  """Modules of spurjax imported at module level (function-level imports are deliberate late imports)."""
  tree = ast.parse(open(path, encoding="utf-8").read())
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  out = set()
  for node in tree.body:
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      mod = node.module or ""
      if node.level:
        base = package.split(".")
        mod = ".".join(base[:len(base) - node.level + 1] + ([mod] if mod else []))
      for a in node.names:   # `from pkg import submodule` imports the submodule
        out.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod)
  return {m for m in out if m in MODULES and m != name}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_file_over_400_lines(name):
  with open(MODULES[name], encoding="utf-8") as f:
    assert sum(1 for _ in f) <= 400, MODULES[name]


def test_no_import_circle():
  graph = {m: _top_level_imports(m, p) for m, p in MODULES.items()}
  state, stack, cycles = {}, [], []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for n in sorted(graph[m]):
      # a package's __init__ importing its own submodules, which import their siblings, is not a circle
      if state.get(n) == "open" and not n.startswith(m + "."):
        if not any(m.startswith(x + ".") for x in stack[stack.index(n):] if x == n):
          cycles.append(stack[stack.index(n):] + [n])
      elif n not in state:
        visit(n)
    stack.pop()
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m)
  assert not cycles, cycles[:3]
