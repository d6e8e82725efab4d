"""`python -m model_store` as a user runs it."""

import subprocess

from tests.helpers import PYTHON, ROOT


def run(*args, model_dir):
    return subprocess.run([PYTHON, "-m", "model_store", *args], cwd=ROOT, capture_output=True, text=True,
                          env={"MODEL_DIR": str(model_dir), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


def test_list_shows_models_and_broken_entries(model_dir, tmp_path):
    (model_dir / "not-a-model").mkdir(exist_ok=True)
    try:
        out = run("list", model_dir=model_dir)
        assert out.returncode == 0, out.stderr
        lines = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
        assert "feature-extraction" in lines["minilm"] and "complete" in lines["minilm"]
        assert "incomplete: no config.json" in lines["not-a-model"]
    finally:
        (model_dir / "not-a-model").rmdir()


def test_build_demo_is_done_once(model_dir):
    out = run("build-demo", "minilm", model_dir=model_dir)
    assert out.returncode == 0 and "present, kept" in out.stdout
