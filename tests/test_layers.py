"""The package's layers (README, "Architecture"): every import in mqvq/, at module level or inside a
function, points to its own layer or a lower one, within a layer only along the allowed edges, and
the module graph has no cycle. A new module must be placed here before this test passes."""

import ast
import re
from pathlib import Path

import mqvq

PACKAGE = Path(mqvq.__file__).parent

# layer 1, foundations: any layer may use them
FOUNDATIONS = {"config", "errors", "files", "machine", "timing", "signals", "runtime", "images", "periodic"}
# layer 2, parts: siblings that know nothing of each other except these edges
PARTS = {
    "models": set(),
    "data": set(),
    "tracking": set(),
    "experiments": set(),
    "paper": set(),
    "metrics": {"models"},  # the FD-VGG16 features are LPIPS's VGG
    "figures": {"metrics"},
}  # Fig. 4 counts foreground tokens as the mask metrics do
# layer 3, stages: each reads what an earlier one wrote; rank 0 holds what every stage shares
STAGES = {
    "runs": 0,
    "schedule": 0,
    "lookup": 0,
    "reference": 0,
    "reconstruction": 0,
    "attributes": 0,
    "train_stage1": 1,
    "tokenize": 2,
    "train_stage2": 3,
    "generate": 4,
    "sample_metrics": 5,
    "evaluate": 6,
}
# layer 4, orchestration
ORCHESTRATION = {"studies": set(), "bench": set(), "reports": {"studies"}}
LAYER_NAMES = {1: "foundations", 2: "parts", 3: "stages", 4: "orchestration", 5: "cli"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the mqvq modules it imports anywhere in its body}."""
    files = {module_name(p): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "mqvq"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                if base.split(".")[0] != "mqvq":
                    continue
                for a in node.names:  # `from mqvq import runtime` imports the module mqvq.runtime
                    found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in files else base)
        graph[name] = {m for m in found if m != name}
    return graph


def place(module: str) -> tuple[int, str, int]:
    """(layer, group, rank within the group's layer) of a module."""
    parts = module.split(".")
    if module == "mqvq":
        return 1, "mqvq", 0
    top = parts[1]
    if top in FOUNDATIONS:
        return 1, top, 0
    if top in PARTS:
        return 2, top, 0
    if top == "stages":
        if len(parts) == 2:
            return 3, "stages", 0
        if parts[2] not in STAGES:
            raise AssertionError(f"{module} is not placed in tests/test_layers.py: add it to STAGES")
        return 3, parts[2], STAGES[parts[2]]
    if top in ORCHESTRATION:
        return 4, top, 0
    if top in ("cli", "__main__"):
        return 5, "cli", 0
    raise AssertionError(f"{module} is not placed in tests/test_layers.py: add it to a layer")


def allowed(src: str, dst: str) -> bool:
    (ls, gs, rs), (ld, gd, rd) = place(src), place(dst)
    if ld != ls:
        return ld < ls
    if ls == 2:
        return gd == gs or gd in PARTS[gs]
    if ls == 3:
        return rd <= rs
    if ls == 4:
        return gd == gs or gd in ORCHESTRATION[gs]
    return True


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for src in sorted(graph):
        for dst in sorted(graph[src]):
            if not allowed(src, dst):
                out.append(f"{src} ({LAYER_NAMES[place(src)[0]]}) imports {dst} ({LAYER_NAMES[place(dst)[0]]})")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_the_package():
    graph = import_graph()
    assert len(graph) > 60
    assert "mqvq.stages.generate" in graph["mqvq.stages.evaluate"]  # a module-level import
    assert "mqvq.stages.train_stage2" in graph["mqvq.stages.generate"]  # one inside a function
    assert "mqvq.runtime" in graph["mqvq.stages.train_stage1"]  # `from mqvq import runtime`


def test_every_module_imports_only_downward():
    graph = import_graph()
    for module in graph:
        place(module)  # every module has a layer
    assert upward_imports(graph) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checks_catch_what_they_guard_against():
    """The rules fail on the kinds of imports this layout was made to remove."""
    bad = {
        "mqvq.models.mqvae": {"mqvq.models.checkpoint", "mqvq.stages.train_stage1"},  # a model knowing its trainer
        "mqvq.data.datasets": {"mqvq.models.mqvae"},  # data importing models
        "mqvq.stages.train_stage1": {"mqvq.stages.generate"},  # a stage reaching forward
        "mqvq.studies.plan": {"mqvq.reports.report"},
    }  # studies importing reports
    assert len(upward_imports(bad)) == 4
    assert cycles(
        {"mqvq.stages.generate": {"mqvq.studies.search"}, "mqvq.studies.search": {"mqvq.stages.generate"}}
    ) == [["mqvq.stages.generate", "mqvq.studies.search"]]


# --------------------------------------------------------------------------- one owner per fact
TAG_MODULE = PACKAGE / "tracking" / "tags.py"
TAG_LITERAL = re.compile(
    r"(?<![\w/])mqvq\.[a-z_]+(\.|\b)"
    r"|\bmlflow\.(parentRunId|note\.content|data\.context|source\.git|experimentKind|sharedViewState)"
)
REGISTRY_MODULE = PACKAGE / "metrics" / "registry.py"
METRIC_LITERAL = re.compile(r"(time/\w+|train/loss|val/loss)")  # metric names the registry owns


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string nodes that are docstrings (they may name tags in prose)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                out.add(id(first.value))
    return out


def tag_literals(path: Path) -> list[str]:
    """`mqvq.<name>` inside a string literal that is not a docstring (tags, filter strings, f-strings)."""
    tree = ast.parse(path.read_text(), str(path))
    docs = _docstrings(tree)
    return [
        f"{path.relative_to(PACKAGE.parent)}:{n.lineno}: {n.value!r}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant)
        and isinstance(n.value, str)
        and id(n) not in docs
        and TAG_LITERAL.search(n.value)
    ]


def metric_literals(path: Path) -> list[str]:
    """A string literal that is exactly one of the registry's metric names (`time/...`, the loss curves)."""
    tree = ast.parse(path.read_text(), str(path))
    return [
        f"{path.relative_to(PACKAGE.parent)}:{n.lineno}: {n.value!r}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and METRIC_LITERAL.fullmatch(n.value)
    ]


SCHEMA_MODULE = PACKAGE / "config" / "schema.py"
SELECTOR_OWNERS = {SCHEMA_MODULE, PACKAGE / "models" / "mqvae.py"}  # the list; its dispatch


def choice_lists(path: Path, choices=None, least: int = 3) -> list[str]:
    """A tuple, list, set or dict of `least` or more of `choices` (default: the selector names): a
    second list of them (`config.schema` holds the one list; naming one to test for it is fine)."""
    from mqvq.config.schema import SELECTORS

    choices = SELECTORS if choices is None else choices
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for n in ast.walk(tree):
        items = n.keys if isinstance(n, ast.Dict) else n.elts if isinstance(n, (ast.Tuple, ast.List, ast.Set)) else []
        names = [e.value for e in items if isinstance(e, ast.Constant) and e.value in choices]
        if len(names) >= least:
            out.append(f"{path.relative_to(PACKAGE.parent)}:{n.lineno}: {names}")
    return out


def selector_lists(path: Path) -> list[str]:
    return choice_lists(path)


def sampler_lists(path: Path) -> list[str]:
    """A second list of the search's samplers (`config.schema.SAMPLERS`; a dispatch naming two is fine)."""
    from mqvq.config.schema import SAMPLERS

    return choice_lists(path, SAMPLERS)


def client_calls(path: Path) -> list[str]:
    """Uses of an MLflow client (`x.client`, `MlflowClient`) in a module."""
    tree = ast.parse(path.read_text(), str(path))
    return [
        f"{path.relative_to(PACKAGE.parent)}:{n.lineno}"
        for n in ast.walk(tree)
        if (isinstance(n, ast.Attribute) and n.attr == "client")
        or (isinstance(n, ast.Name) and n.id == "MlflowClient")
        or (isinstance(n, ast.alias) and n.name == "MlflowClient")
    ]


PERIODIC_MODULE = PACKAGE / "periodic.py"


def thread_loops(path: Path) -> list[str]:
    """`threading.Thread(...)` or `threading.Event()`: a background loop of its own, where
    `mqvq.periodic.Periodic` is the one ticker (a heartbeat or sampler that must never stop its work)."""
    tree = ast.parse(path.read_text(), str(path))
    return [
        f"{path.relative_to(PACKAGE.parent)}:{n.lineno}: threading.{n.func.attr}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr in ("Thread", "Event")
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "threading"
    ]


def private_imports(path: Path) -> list[str]:
    """`from mqvq.x import _name` and `module._name` on an imported mqvq module: a private name used
    outside the module that owns it."""
    tree = ast.parse(path.read_text(), str(path))
    out, modules = [], set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("mqvq"):
            for a in n.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    out.append(f"{path.relative_to(PACKAGE.parent)}:{n.lineno}: {a.name} from {n.module}")
                elif f"{n.module}.{a.name}" in {module_name(p) for p in PACKAGE.rglob("*.py")}:
                    modules.add(a.asname or a.name)
        elif isinstance(n, ast.Import):
            modules |= {a.asname for a in n.names if a.name.startswith("mqvq") and a.asname}
    for n in ast.walk(tree):
        if (
            isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name)
            and n.value.id in modules
            and n.attr.startswith("_")
            and not n.attr.startswith("__")
        ):
            out.append(f"{path.relative_to(PACKAGE.parent)}:{n.lineno}: {n.value.id}.{n.attr}")
    return out


def test_tag_names_are_spelled_only_in_the_tag_module():
    found = [hit for p in sorted(PACKAGE.rglob("*.py")) if p != TAG_MODULE for hit in tag_literals(p)]
    assert found == []


def test_metric_names_are_spelled_only_in_the_registry():
    found = [hit for p in sorted(PACKAGE.rglob("*.py")) if p != REGISTRY_MODULE for hit in metric_literals(p)]
    assert found == []


def test_the_selectors_are_listed_only_in_the_schema():
    found = [hit for p in sorted(PACKAGE.rglob("*.py")) if p not in SELECTOR_OWNERS for hit in selector_lists(p)]
    assert found == []


def test_the_search_samplers_are_listed_only_in_the_schema():
    found = [hit for p in sorted(PACKAGE.rglob("*.py")) if p != SCHEMA_MODULE for hit in sampler_lists(p)]
    assert found == []


def test_only_tracking_talks_to_the_mlflow_client():
    found = [
        hit
        for p in sorted(PACKAGE.rglob("*.py"))
        if "tracking" not in p.relative_to(PACKAGE).parts
        for hit in client_calls(p)
    ]
    assert found == []


def test_background_loops_are_only_the_periodic_ticker():
    found = [hit for p in sorted(PACKAGE.rglob("*.py")) if p != PERIODIC_MODULE for hit in thread_loops(p)]
    assert found == []


def test_no_private_name_is_used_across_modules():
    assert [hit for p in sorted(PACKAGE.rglob("*.py")) for hit in private_imports(p)] == []


def test_the_ownership_checks_catch_what_they_guard_against(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        '"""mqvq.status in a docstring is prose."""\n'
        "from mqvq.tracking.store import _file_lock\n"
        "from mqvq.studies import lease\n"
        'x = {"mqvq.status": 1}\n'
        'y = f"tags.\\"mqvq.seed\\" = {1}"\n'
        "lease._pid_alive(1)\n"
        'tracker.client.get_run("r")\n'
        'z = {"time/tokenize_seconds": 1.0, "val/loss": 2.0}\n'
        'w = {"mlflow.parentRunId": "p", "mlflow.note.content": "n"}\n'
        'v = ("gain", "damage", "entropy")\n'
        'u = ("tpe", "gp", "random")\n'
        "stop = threading.Event()\n"
        "t = threading.Thread(target=print, daemon=True)\n"
    )
    real = PACKAGE.parent
    try:
        globals()["PACKAGE"] = tmp_path / "mqvq"
        (tmp_path / "mqvq" / "studies").mkdir(parents=True)
        (tmp_path / "mqvq" / "studies" / "lease.py").write_text("")
        moved = tmp_path / "mqvq" / "bad.py"
        bad.rename(moved)
        assert len(tag_literals(moved)) == 4
        assert len(metric_literals(moved)) == 2
        assert len(selector_lists(moved)) == 1
        assert len(sampler_lists(moved)) == 1
        assert len(client_calls(moved)) == 1
        assert len(thread_loops(moved)) == 2
        assert [h.split(": ", 1)[1] for h in private_imports(moved)] == [
            "_file_lock from mqvq.tracking.store",
            "lease._pid_alive",
        ]
    finally:
        globals()["PACKAGE"] = real / "mqvq"
