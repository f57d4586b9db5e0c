"""The main job end to end on a tiny configuration (the full run is the README's first command)."""

import json
from pathlib import Path

import pytest

from tf_netvlad.cli import main


@pytest.mark.slow
def test_demo_command_writes_every_artefact(tmp_path, capsys):
    argv = ["demo", "--data", str(tmp_path / "data"), "--run-dir", str(tmp_path / "run"),
            "--saved-model", str(tmp_path / "saved" / "demo"), "--scale", "0.1", "--epochs", "1",
            "--minutes", "2"]
    assert main.main(argv) == 0
    printed = capsys.readouterr().out
    assert "k-means init" in printed and "trained" in printed and "artefacts:" in printed
    summary = json.loads((tmp_path / "run" / "demo_summary.json").read_text())
    for stage in ("before", "after"):
        assert 0.0 <= summary[stage]["recall@1"] <= summary[stage]["recall@20"] <= 1.0
        assert summary[stage]["num_queries"] > 0
    for key in ("init_model", "trained_model", "recall_curve", "retrievals", "training_log"):
        assert Path(summary["artefacts"][key]).exists(), key
    assert (Path(summary["artefacts"]["saved_model"]) / "saved_model.pb").exists()
    # a second run resumes the finished run instead of retraining, and exports the next version
    assert main.main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "saved" / "demo").iterdir() if p.is_dir()) == ["1", "2"]
