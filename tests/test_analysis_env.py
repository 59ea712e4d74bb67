"""The analysis rules run in workflow/envs/analysis.yaml, which has no torch: their kdcore code must not need it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# Imports the analysis scripts make, run in a fresh interpreter where importing torch fails.
BLOCK_TORCH = """
import importlib, sys
class NoTorch:
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError("torch is not in the analysis environment")
sys.meta_path.insert(0, NoTorch())
for module in sys.argv[1:]:
    importlib.import_module(module)
"""


def analysis_env_rules() -> list[str]:
    text = (REPO / "workflow/rules/analysis.smk").read_text(encoding="utf-8")
    rules = re.split(r"^\s*rule ", text, flags=re.M)[1:]  # rules may sit inside an `if` block
    return [r.split(":")[0] for r in rules if "envs/analysis.yaml" in r]


def test_analysis_environment_has_no_torch():
    deps = yaml.safe_load((REPO / "workflow/envs/analysis.yaml").read_text(encoding="utf-8"))["dependencies"]
    names = {str(d).split()[0].split("=")[0] for d in deps}
    assert not names & {"pytorch", "torch", "torchvision"}
    assert {"pandas", "scipy", "statsmodels", "matplotlib", "seaborn"} <= names


def test_analysis_rules_and_their_kdcore_code_import_without_torch():
    rules = analysis_env_rules()
    assert {"analysis_run_table", "analysis_stats", "analysis_figure", "analysis_latex"} <= set(rules)
    assert "analysis_reference" not in rules  # the importer counts parameters with torchvision: kdcore env
    modules = [
        "kdcore.analysis.table",
        "kdcore.analysis.stats",
        "kdcore.analysis.moderation",
        "kdcore.analysis.figures",
        "kdcore.analysis.latex",
        "kdcore.analysis.compare",
        "kdcore.analysis.outputs",
        "kdcore.selection",
    ]
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, *modules],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]


# A study's method catalog as the workflow passes it; the LaTeX and figure code labels a method unknown to
# kdcore from it alone, with torch blocked.
CATALOG_RUN = """
from kdcore.analysis import figures, latex, methods
import pandas as pd
methods.use_catalog({"methods": {"baseline": {"label": "Baseline (CE)", "tex": "Baseline"},
                                 "toy": {"label": "Toy plain", "tex": "Toy-TeX"}},
                     "hyperparameters": [{"name": "weight", "label": "weight", "tex": "$w_t$"}]})
sel = pd.DataFrame({"pair": ["a-b", "a-b"], "teacher": ["a", "a"], "student": ["b", "b"], "method": ["toy", "toy"],
                    "weight": [0.5, 2.0], "seed": [0, 0], "val_acc": [50.0, 60.0], "test_best": [49.0, 58.0],
                    "winner": [False, True], "used_in_final": [False, True]})
tex = latex.tex_selection(sel)
assert "Toy-TeX" in tex and "$w_t$" in tex and "alpha" not in tex, tex
assert methods.method_label("toy") == "Toy plain" and figures.kd_methods(sel) == ["toy"]
assert "torch" not in sys.modules
"""


def test_analysis_labels_come_from_the_catalog_without_torch():
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + CATALOG_RUN],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
