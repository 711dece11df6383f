"""The examples run as a user would run them.

* The offline examples (``custom_effect.py``, ``toy_*.py``) run here on the tiny pipelines.
* The real-model examples (SD 1.5, SDXL, Flux, Wan) never load their real weights here. Each is compiled, its
  module imported (pipelines load only inside ``main``), every visattn name it uses checked against the library
  (attributes exist, calls bind to the signatures), and its ``main`` run end to end on a tiny random-weight model
  of the same diffusers pipeline class saved to a folder, passed as ``model_id``.
* ``batch_jobs.jsonl`` parses, builds its effects and edits, and passes ``visattn batch --dry-run``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

#: real-model example -> (the model id it documents, the tiny family of the same pipeline class)
REAL_EXAMPLES = {
    "sd15_prompt_to_prompt": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "unet"),
    "sd35_prompt_to_prompt": ("stabilityai/stable-diffusion-3.5-medium", "sd3"),
    "sdxl_pag_softpag": ("stabilityai/stable-diffusion-xl-base-1.0", "StableDiffusionXLPipeline"),
    "flux_neighborhood_and_maps": ("black-forest-labs/FLUX.1-dev", "flux"),
    "wan_radial_extrapolation": ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "wan"),
}
TOY_EXAMPLES = ("toy_edit", "toy_guidance", "toy_sparse_attention")
ALL_SCRIPTS = ("custom_effect", *TOY_EXAMPLES, *REAL_EXAMPLES)

#: arguments that shrink a real example to its tiny model on the CPU (sizes and layer names of the tiny models)
TINY_ARGUMENTS = {
    "sd15_prompt_to_prompt": {"inner_steps": 1},
    "sd35_prompt_to_prompt": {"height": 32, "width": 32},
    "sdxl_pag_softpag": {"hunt_rounds": 1, "hunt_steps": 1},
    "flux_neighborhood_and_maps": {
        "height": 32,
        "width": 32,
        "kernel_size": 3,
        "pag_layers": "single_transformer_blocks.0.attn",
    },
    "wan_radial_extrapolation": {"height": 32, "width": 32, "frames": 9, "density_tile": 16, "stg_layers": "blocks.1"},
}


def load_example(name: str) -> types.ModuleType:
    """Import ``examples/NAME.py`` as a module (its ``if __name__ == "__main__"`` block does not run)."""
    spec = importlib.util.spec_from_file_location(f"visattn_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses defined in the script look their module up here
    spec.loader.exec_module(module)
    return module


# --- checking the visattn names a script uses -------------------------------------------------------------------


def _is_visattn(obj) -> bool:
    name = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None) or ""
    return name == "visattn" or name.startswith("visattn.")


def _instance_attributes(cls: type) -> set[str]:
    """Attributes instances of a visattn class get: dataclass fields, slots, and ``self.x = ...`` in its code."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if not _is_visattn(klass):
            continue
        if dataclasses.is_dataclass(klass):
            names |= {field.name for field in dataclasses.fields(klass)}
        names |= set(getattr(klass, "__slots__", ()))
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                targets = [node.target]
            else:
                continue
            for target in targets:
                for part in ast.walk(target):
                    if isinstance(part, ast.Attribute) and isinstance(part.value, ast.Name) and part.value.id == "self":
                        names.add(part.attr)
    return names


def _returned_class(function) -> type | None:
    """The visattn class a function or method is annotated to return, if any."""
    annotation = inspect.signature(function).return_annotation
    if isinstance(annotation, str):
        annotation = getattr(function, "__globals__", {}).get(annotation.strip("'\""))
    return annotation if isinstance(annotation, type) and _is_visattn(annotation) else None


class ApiChecker:
    """Statically checks a script's use of visattn against the imported library.

    Names bound at module level (imports) resolve to objects; a variable assigned the result of a visattn
    class or of a function annotated to return one is typed as an instance of it. Every attribute taken from a
    visattn module, class or instance must exist, and every call of a visattn callable must bind to its signature
    (argument count and keyword names).
    """

    def __init__(self, module: types.ModuleType, tree: ast.Module) -> None:
        self.globals = vars(module)
        self.tree = tree
        self.problems: list[str] = []
        self.types: dict[str, type | None] = {}

    def run(self) -> list[str]:
        self._infer_types()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Attribute):
                self._resolve(node)
            elif isinstance(node, ast.Call):
                self._check_call(node)
        return list(dict.fromkeys(self.problems))  # an attribute inside a longer chain is reported once

    def _infer_types(self) -> None:
        for node in ast.walk(self.tree):
            pairs = []
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                pairs.append((node.targets[0].id, node.value))
            elif isinstance(node, ast.withitem) and isinstance(node.optional_vars, ast.Name):
                pairs.append((node.optional_vars.id, node.context_expr))
            for name, value in pairs:
                cls = self._class_of(value)
                if name in self.types and self.types[name] is not cls:
                    cls = None  # assigned different things: do not guess
                self.types[name] = cls

    def _class_of(self, value: ast.expr) -> type | None:
        if not isinstance(value, ast.Call):
            return None
        resolved = self._resolve(value.func, report=False)
        if resolved is None:
            return None
        kind, obj = resolved
        if kind == "object" and isinstance(obj, type) and _is_visattn(obj):
            return obj
        if callable(obj) and _is_visattn(obj):
            try:
                return _returned_class(obj)
            except (TypeError, ValueError):
                return None
        return None

    def _resolve(self, node: ast.expr, report: bool = True):
        """``("object", obj)`` for a module/class/function, ``("instance", cls)`` for a typed variable, or None."""
        if isinstance(node, ast.Name):
            if self.types.get(node.id) is not None:
                return "instance", self.types[node.id]
            if node.id in self.globals and node.id not in self.types:
                return "object", self.globals[node.id]
            return None
        if not isinstance(node, ast.Attribute):
            return None
        base = self._resolve(node.value, report)
        if base is None:
            return None
        kind, obj = base
        if not _is_visattn(obj):
            return None
        where = f"line {node.lineno}: {ast.unparse(node)}"
        if kind == "instance":
            if hasattr(obj, node.attr):
                member = getattr(obj, node.attr)
                return ("method", member) if inspect.isfunction(member) else None
            if node.attr not in _instance_attributes(obj) and report:
                self.problems.append(f"{where}: {obj.__name__} instances have no attribute {node.attr!r}")
            return None
        if not hasattr(obj, node.attr):
            if report:
                self.problems.append(f"{where}: {getattr(obj, '__name__', obj)} has no attribute {node.attr!r}")
            return None
        return "object", getattr(obj, node.attr)

    def _check_call(self, node: ast.Call) -> None:
        resolved = self._resolve(node.func, report=False)
        if resolved is None:
            return
        kind, target = resolved
        if not callable(target) or not _is_visattn(target):
            return
        if any(isinstance(arg, ast.Starred) for arg in node.args) or any(kw.arg is None for kw in node.keywords):
            return  # *args / **kwargs: the shape of the call is not known statically
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            return
        positional = [None] * (len(node.args) + (kind == "method"))  # a method called on an instance gets self
        try:
            signature.bind_partial(*positional, **{kw.arg: None for kw in node.keywords})
        except TypeError as error:
            self.problems.append(f"line {node.lineno}: {ast.unparse(node.func)}(...) does not fit {signature}: {error}")


def api_problems(path: Path, module: types.ModuleType) -> list[str]:
    return ApiChecker(module, ast.parse(path.read_text(encoding="utf-8"))).run()


# --- every script ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_SCRIPTS)
def test_script_compiles_imports_and_uses_only_existing_visattn_api(name):
    path = EXAMPLES / f"{name}.py"
    compile(path.read_text(encoding="utf-8"), str(path), "exec")
    module = load_example(name)
    assert module.__doc__ and len(module.__doc__.splitlines()) > 3, f"{name}.py needs a descriptive docstring"
    assert callable(module.main)
    assert api_problems(path, module) == []


def test_api_checker_reports_wrong_names_and_arguments(tmp_path):
    # The checker itself: a wrong keyword, a missing attribute of a class and of an instance, too many
    # positional arguments, and a misspelt module attribute are each reported; correct uses are not.
    path = tmp_path / "broken.py"
    path.write_text(
        textwrap.dedent(
            """
            import visattn
            from visattn.effects import AttentionMaps, PromptToPrompt, RadialAttention

            def main(pipe):
                p2p = PromptToPrompt.replace("a cat", "a dog", cross_steps=0.8)
                maps = AttentionMaps(prompt=p2p.prompts)
                AttentionMaps(prompts=p2p.prompts)
                maps.overlays(None)
                p2p.generator(0, 1, "cpu", 4)
                RadialAttention.no_such_thing
                RadialAttention(dense_steps=0.2, dense_layers=1)
                visattn.atach(pipe, p2p)
                return maps.heatmaps(size=64), p2p.source
            """
        ),
        encoding="utf-8",
    )
    spec = importlib.util.spec_from_file_location("broken_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports only: main() is never called
    problems = "\n".join(api_problems(path, module))
    assert "AttentionMaps(...) does not fit" in problems and "'prompts'" in problems
    assert "'overlays'" in problems
    assert "p2p.generator" in problems
    assert "'no_such_thing'" in problems
    assert "'atach'" in problems
    assert len(problems.splitlines()) == 5, problems


# --- the real-model examples ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(REAL_EXAMPLES))
def test_real_example_documents_its_model_and_hardware(name):
    model_id, _ = REAL_EXAMPLES[name]
    module = load_example(name)
    doc = module.__doc__
    assert model_id in doc
    assert "GPU" in doc and re.search(r"\d+ GB", doc), "state the GPU memory it needs"
    assert "Runtime" in doc
    assert inspect.signature(module.main).parameters["model_id"].default == model_id


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REAL_EXAMPLES))
def test_real_example_runs_on_a_tiny_model_of_its_pipeline_class(name, tmp_path, capsys):
    from visattn.tiny import tiny_pipeline

    _, family = REAL_EXAMPLES[name]
    tiny_pipeline(family).save_pretrained(tmp_path / "model")
    module = load_example(name)
    written = module.main(
        model_id=str(tmp_path / "model"),
        out_dir=tmp_path / "out",
        steps=2,
        device="cpu",
        dtype=torch.float32,
        **TINY_ARGUMENTS[name],
    )
    printed = capsys.readouterr().out
    assert written
    for path in written:
        assert path.is_file() and path.stat().st_size > 0
        assert str(path) in printed


# --- the offline examples -------------------------------------------------------------------------------------------


def test_custom_effect_example_runs_and_changes_the_image(tmp_path):
    out = tmp_path / "custom"  # a folder, as for every example (issue 29: a folder used to crash it)
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "custom_effect.py"), "--out", str(out), "--rows", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "max pixel change" in result.stdout
    change = float(result.stdout.rsplit("max pixel change", 1)[1].strip(" )\n"))
    assert change > 0
    with Image.open(out / "custom_effect.png") as image:
        assert image.width == 2 * image.height


def test_custom_effect_main_takes_a_folder_or_a_png_path(tmp_path, capsys):
    module = load_example("custom_effect")
    (tmp_path / "existing").mkdir()
    assert module.main(tmp_path / "existing") == [tmp_path / "existing" / "custom_effect.png"]
    assert module.main(tmp_path / "picture.png") == [tmp_path / "picture.png"]
    assert (tmp_path / "picture.png").is_file() and "max pixel change" in capsys.readouterr().out


#: per toy example: the files it writes (in order) and patterns its printout must contain
TOY_OUTPUTS = {
    "toy_edit": (
        ["replace.png", "heatmaps_source.png", "heatmaps_edit.png", "reweight.png"],
        [r"local blend: the 'circle' region covers \d+% of the latent grid", r"edit heatmaps, left to right: .*green"],
    ),
    "toy_guidance": (
        ["heads.json", "guidance.png"],
        [rf"^{name} \(.*\)\s+mean pixel change from unguided: [\d.]+$" for name in ("PAG", "SoftPAG", "SEG")],
    ),
    "toy_sparse_attention": (
        ["dense.webp", "neighborhood.webp", "radial.webp", "decay.webp", "sheet.png"],
        [
            # both patterns are really sparse on the toy grid (between 0 and 100% of the pairs kept)
            r"^neighborhood\s+keeps [1-9]\d?\.\d% of query-key pairs",
            r"^radial\s+keeps [1-9]\d?\.\d% of query-key pairs",
            r"dense\.webp; motion continuity [01]\.\d\d$",
            *(
                rf"{name}\.webp; motion continuity [01]\.\d\d; mean change from the dense video"
                for name in ("neighborhood", "radial", "decay")
            ),
        ],
    ),
}


@pytest.mark.parametrize("name", TOY_EXAMPLES)
def test_toy_example_writes_and_reports_its_outputs(name, tmp_path, capsys):
    files, patterns = TOY_OUTPUTS[name]
    written = load_example(name).main(out_dir=tmp_path / "out", steps=2)
    printed = capsys.readouterr().out
    assert written == [tmp_path / "out" / file for file in files]
    for path in written:
        assert f"wrote {path}" in printed
        if path.suffix in (".png", ".webp"):
            with Image.open(path) as image:
                image.verify()
    for pattern in patterns:
        assert re.search(pattern, printed, re.MULTILINE), f"{pattern!r} not in:\n{printed}"


# --- the jobs file --------------------------------------------------------------------------------------------------


def test_batch_jobs_file_is_valid_and_builds_every_effect(tmp_path, capsys):
    from visattn.batch.jobs import parse_jobs
    from visattn.cli import main as cli

    jobs, errors = parse_jobs(EXAMPLES / "batch_jobs.jsonl")
    assert errors == []
    assert len(jobs) >= 6
    assert any(job.is_edit for job in jobs) and any(job.effects for job in jobs)
    for job in jobs:
        job.build_effects()
        job.build_edit()
    assert cli(["batch", str(EXAMPLES / "batch_jobs.jsonl"), "--out", str(tmp_path), "--dry-run"]) == 0
    assert capsys.readouterr().out.split() == [job.id for job in jobs]


def test_examples_pass_the_dtype_keyword_their_diffusers_takes(monkeypatch):
    """diffusers 0.40 renamed from_pretrained's ``torch_dtype`` to ``dtype`` (the old name warns); the examples pass
    whichever the installed release takes, through ``visattn.diffusers_compat.dtype_kwargs``."""
    import diffusers

    from visattn.diffusers_compat import dtype_kwargs

    for path in sorted((ROOT / "examples").glob("*.py")):
        assert "torch_dtype=" not in path.read_text(encoding="utf-8"), path.name
    monkeypatch.setattr(diffusers, "__version__", "0.40.0.dev0")
    assert dtype_kwargs(torch.float16) == {"dtype": torch.float16}
    monkeypatch.setattr(diffusers, "__version__", "0.39.1")
    assert dtype_kwargs(torch.float16) == {"torch_dtype": torch.float16}
