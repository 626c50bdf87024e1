"""The package's folders are layers: each module imports only from its own layer or the layers
below it (the order in ``distill/__init__.py``'s docstring), and no modules import each other in a
circle. Read from the source with ``ast``, function-local imports included."""
import ast
from pathlib import Path

import distill

SRC = Path(distill.__file__).parent

#: lowest first; a module may import from its own layer and the ones before it
LAYERS = [
    ("core", ["distill.errors", "distill.checks", "distill.digest", "distill.atomic", "distill.checkpoints",
              "distill.distributed", "distill.modelio"]),
    ("losses", ["distill.losses"]),
    ("data", ["distill.data"]),
    ("metrics", ["distill.metrics"]),
    ("models", ["distill.models"]),
    ("teachers", ["distill.teachers"]),
    ("train", ["distill.train"]),
    ("methods", ["distill.methods"]),
    ("tools", ["distill.tools"]),
    ("experiments", ["distill.experiments"]),
    ("cli", ["distill.cli", "distill.__main__"]),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    if module == "distill":
        return len(LAYERS)  # the package's public face sits on top
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def imports(path: Path) -> list[tuple[str, int]]:
    """``(module, line)`` of every ``distill`` import in ``path`` (``from distill import x`` counts
    as importing ``distill.x`` when that is a module)."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "distill"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "distill":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                is_module = (SRC.parent / Path(*sub.split("."))).with_suffix(".py").is_file() or \
                    (SRC.parent / Path(*sub.split("."))).is_dir()
                found.append((sub if is_module else node.module, node.lineno))
    return found


def graph() -> dict[str, list[tuple[str, int]]]:
    return {module_name(p): imports(p) for p in sorted(SRC.rglob("*.py"))}


def test_every_module_belongs_to_a_layer():
    missing = [m for m in graph() if m != "distill" and layer_of(m) is None]
    assert not missing, f"modules outside every layer of LAYERS: {missing}"


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for mod, deps in graph().items():
        for dep, line in deps:
            if layer_of(dep) is not None and layer_of(mod) is not None and layer_of(dep) > layer_of(mod):
                above = LAYERS[layer_of(dep)][0] if layer_of(dep) < len(LAYERS) else "the package's public face"
                upward.append(f"{mod}:{line} imports {dep} ({above} is above {LAYERS[layer_of(mod)][0]})")
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    gr = graph()
    g = {m: {d for d, _ in deps if d in gr} for m, deps in gr.items()}
    # a package imports its own modules to re-export them: that edge is not a dependency of theirs
    g = {m: {d for d in ds if not d.startswith(m + ".")} for m, ds in g.items()}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(g.get(m, ())):
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_the_package_docstring_lists_the_layers_in_order():
    doc = distill.__doc__
    at = [doc.find(f"\n    {name}") for name, _ in LAYERS]
    assert all(i >= 0 for i in at) and at == sorted(at), at


# ---------------------------------------------------------------- identity does not follow the files

def test_classes_in_run_keys_keep_their_names_wherever_they_live():
    from distill.digest import key_name, model_signature
    from distill.losses import (DKD, ChannelWiseDistillation, DenseHardLabels, Distillation, HardLabels,
                                LogitMatching, PixelwiseDistillation, Standardized, objective_spec)
    from distill.models import CNN, MLP, DeepLabV3, MobileNetSeg

    names = {MLP: "distill.models.MLP", CNN: "distill.models.CNN",
             DeepLabV3: "distill.segmentation.DeepLabV3", MobileNetSeg: "distill.segmentation.MobileNetSeg",
             HardLabels: "distill.losses.HardLabels", Distillation: "distill.losses.Distillation",
             LogitMatching: "distill.losses.LogitMatching", DenseHardLabels: "distill.losses.DenseHardLabels",
             PixelwiseDistillation: "distill.losses.PixelwiseDistillation",
             ChannelWiseDistillation: "distill.losses.ChannelWiseDistillation", DKD: "distill.losses.DKD",
             Standardized: "distill.losses.Standardized"}
    for cls, name in names.items():
        assert key_name(cls) == name
    assert objective_spec(Distillation(4.0)) == dict(objective="distill.losses.Distillation", temperature=4.0,
                                                     hard_weight=0.1, soft_weight=1.0)
    sig = model_signature(MLP(10, [8], 3))
    assert sig["cls"] == "distill.models.MLP" and sig["factory"][0] == "distill.models:MLP"

    class Mine(MLP):  # a user's subclass is not distill's MLP
        pass

    assert key_name(Mine).endswith("Mine")


def test_a_checkpoint_naming_a_module_that_moved_still_loads(tmp_path):
    # the factory names written before the models moved into distill.models (the same that
    # distill writes now: a checkpoint's factory name is part of its identity, so it never changes)
    import torch

    from distill.checkpoints import load_checkpoint, save_tensors
    from distill.models import MobileNetSeg

    torch.manual_seed(0)
    m = MobileNetSeg(num_classes=3, image_shape=(16, 16), width=8)
    assert m.distill_factory[0] == "distill.segmentation:MobileNetSeg"
    save_tensors(tmp_path / "old", m.state_dict(),
                 dict(factory=dict(target="distill.segmentation:MobileNetSeg", kwargs=m.distill_factory[1])))
    back, side = load_checkpoint(tmp_path / "old")  # distill's own: no trust needed, found through the alias
    assert isinstance(back, MobileNetSeg)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), m.state_dict().values()))
