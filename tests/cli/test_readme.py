"""The README's promises: the two set-up commands and the add-a-learner example work."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_first_lines_are_the_two_setup_commands():
    block = README.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert block[0].startswith("pip install -e . && cilkit run")
    assert block[1].startswith('pip install -e ".[test]" && pytest')


def test_add_a_learner_example_runs(tmp_path):
    code = re.search(r"```python\n(# src/cilkit/learners/my_lwf.py.*?)```", README, re.S).group(1)
    script = (
        code
        + """
from cilkit.config import build_config
from cilkit.engine.trainer import Trainer
cfg = build_config({"data": {"name": "digits"}, "learner": {"name": "my_lwf", "kd_weight": 2},
                    "scenario": {"increment": 5}, "backbone": {"name": "convnet4", "hidden": 16},
                    "train": {"epochs": 1}, "engine": {"progress": "none"}})
s = Trainer(cfg, RUN_DIR, log=None).fit()
assert len(s["accuracy_matrix"]) == 2, s
print("ok")
""".replace("RUN_DIR", repr(str(tmp_path / "run")))
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")
