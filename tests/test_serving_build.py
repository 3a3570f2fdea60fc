"""``bentoml build`` works offline and the bento holds what serving needs (and nothing of
``training/``); ``serving/`` imports ``model/`` only."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_serving_depends_on_model_only() -> None:
    for path in (ROOT / "serving").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in ("training", "tutti"), f"{path.name}: {name}"


def test_bentoml_build_offline(tmp_path: Path) -> None:
    dead = "http://127.0.0.1:9"  # any download attempt fails fast
    env = dict(os.environ, BENTOML_DO_NOT_TRACK="true", BENTOML_HOME=str(tmp_path),
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", HTTP_PROXY=dead,
               HTTPS_PROXY=dead, http_proxy=dead, https_proxy=dead)
    proc = subprocess.run([str(BIN / "bentoml"), "build", "--output", "tag"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [bento] = [p for p in (tmp_path / "bentos" / "tutti").iterdir() if p.name != "latest"]
    src = bento / "src"
    for needed in ("serving/service.py", "model/streaming.py", "conf/serving.yaml",
                   "models/noncausal/model.safetensors", "models/causal/config.json"):
        assert (src / needed).is_file(), needed
    assert not (src / "training").exists() and not (src / "tests").exists()
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM nvidia/cuda:" in dockerfile and "libsndfile1" in dockerfile
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "torch==2.13.0" in requirements and "bentoml==1.4.39" in requirements
