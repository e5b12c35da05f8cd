"""The package's layers point down only: a module imports from its own layer or below.

A new top-level module or package must be placed in LAYERS; an import that
reaches up (say `rlhf` importing `stages`) fails here with the file and line.
"""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "research")

# Bottom to top. Each entry is a top-level module or package of `research`.
LAYERS = (
    ("data", "distributed", "errors", "host_memory", "models", "ratings", "rewards", "seeds",
     "validate"),                                  # text, modules, checks, reward functions
    ("training", "objectives", "sampling"),        # steps, losses, the sampler
    ("continuous_batching",),                      # the sampler with slots refilled
    ("runs",),                                     # a workdir: config, tokenizer, parameters
    ("reward_fn", "rlhf", "evaluation", "verifiable"),  # RL machinery over trained runs
    ("stages",),                                   # run(config, workdir) per stage
    ("main", "cli", "convert", "generate", "serve_reward", "rate"),  # command lines
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _unit(module: str) -> str | None:
  """'research.rlhf.online' -> 'rlhf'; None outside the package."""
  parts = module.split(".")
  return parts[1] if parts[0] == "research" and len(parts) > 1 else None


def imports(path: str):
  """(line, imported unit) of every `research` import in a file, nested ones included."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if _unit(alias.name):
          yield node.lineno, _unit(alias.name)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module == "research":  # from research import runs, sampling
        for alias in node.names:
          yield node.lineno, alias.name
      elif _unit(node.module):
        yield node.lineno, _unit(node.module)


def modules():
  for dirpath, _, files in os.walk(ROOT):
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, ROOT)
        yield path, rel.split(os.sep)[0].removesuffix(".py")


def test_every_module_has_a_layer():
  units = {unit for _, unit in modules()} - {"__init__"}
  assert not units - set(LAYER), f"place these in tests/test_layers.py LAYERS: {units - set(LAYER)}"


def test_no_import_reaches_up():
  upward = []
  for path, unit in modules():
    if unit == "__init__":
      continue
    for line, target in imports(path):
      if target in LAYER and LAYER[target] > LAYER[unit]:
        upward.append(f"research/{os.path.relpath(path, ROOT)}:{line} ({unit}, layer "
                      f"{LAYER[unit]}) imports {target} (layer {LAYER[target]})")
  assert not upward, "imports that reach up a layer:\n" + "\n".join(upward)


def test_units_form_no_cycle():
  graph = {unit: set() for unit in LAYER}
  for path, unit in modules():
    if unit in graph:
      graph[unit] |= {t for _, t in imports(path) if t in graph and t != unit}
  seen, stack = set(), []

  def visit(node):
    if node in stack:
      pytest.fail("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
    if node in seen:
      return
    stack.append(node)
    for nxt in sorted(graph[node]):
      visit(nxt)
    stack.pop()
    seen.add(node)

  for node in sorted(graph):
    visit(node)


def test_the_check_catches_an_upward_import(tmp_path):
  """The parser sees nested and `from research import x` forms."""
  path = tmp_path / "m.py"
  path.write_text("def f():\n  from research.stages import common\nfrom research import runs\n")
  assert sorted(imports(str(path))) == [(2, "stages"), (3, "runs")]


def readme_layout():
  """Paths named in the README's layout block, relative to the repository root."""
  with open(os.path.join(os.path.dirname(ROOT), "README.md"), encoding="utf-8") as f:
    text = f.read()
  block = text.split("## Layout", 1)[1].split("```", 2)[1]
  paths, parent = [], {}
  for line in block.splitlines():
    stripped = line.lstrip()
    token = stripped.split(" ", 1)[0]
    if not token.endswith((".py", "/")):
      continue
    depth = (len(line) - len(stripped)) // 2
    path = parent.get(depth - 1, "") + token
    parent[depth] = path if path.endswith("/") else parent.get(depth - 1, "")
    paths.append(path)
  return paths


def test_readme_layout_matches_the_tree():
  repo = os.path.dirname(ROOT)
  named = readme_layout()
  missing = [p for p in named if not os.path.exists(os.path.join(repo, p))]
  assert not missing, f"README layout names paths that do not exist: {missing}"
  units = {unit for _, unit in modules()} - {"__init__"}
  unnamed = [u for u in sorted(units) if not any(
      p.startswith(f"research/{u}/") or p == f"research/{u}.py" for p in named)]
  assert not unnamed, f"README layout does not mention research/{unnamed}"
  for package in ("objectives", "rlhf"):  # listed file by file
    files = {f for f in os.listdir(os.path.join(ROOT, package))
             if f.endswith(".py") and f != "__init__.py"}
    assert files <= {os.path.basename(p) for p in named if p.startswith(f"research/{package}/")}
