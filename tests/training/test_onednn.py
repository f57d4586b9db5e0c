"""`train()` says when TensorFlow's oneDNN CPU kernels are off because TensorFlow was imported first.

`import tf_netvlad` turns them on through `TF_ENABLE_ONEDNN_OPTS`, which TensorFlow reads once when it
loads. A script that imported TensorFlow first trained with them off, about 40 % fewer steps in a
time-limited run, silently. Each case runs in a fresh process: the import order is the point.
"""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="the oneDNN switch is an x86 matter")

CASE = """
import json, logging, os, sys
{before}
records = []
handler = logging.Handler()
handler.emit = lambda record: records.append(record.getMessage())
logging.getLogger("tf_netvlad").addHandler(handler)
from tf_netvlad.training.train import train
try:
    train(sys.argv[1], out_dir=sys.argv[2])
except Exception as error:
    failure = type(error).__name__
import tensorflow as tf
print(json.dumps([records, failure, tf.config.list_physical_devices("GPU") == []]))
"""


def _run(before, tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    out = subprocess.run([sys.executable, "-c", CASE.format(before=before), str(tmp_path / "missing.mat"),
                          str(tmp_path / "run")], capture_output=True, text=True, check=True,
                         env={**base, "TF_CPP_MIN_LOG_LEVEL": "2", **env}, timeout=300)
    records, failure, no_gpu = json.loads(out.stdout.strip().splitlines()[-1])
    assert failure in ("FileNotFoundError", "ValueError")  # the missing split, after the warning
    assert not (tmp_path / "run").exists()
    if not no_gpu:
        pytest.skip("the warning is for CPU training")
    return [r for r in records if "oneDNN" in r]


def test_tensorflow_imported_first_with_onednn_off_is_warned_once(tmp_path):
    # TensorFlow loads with the kernels off ("0" at its import, whatever the CPU's default), then the
    # variable is gone when tf_netvlad is imported, as in a script that imports tensorflow first
    before = ("os.environ['TF_ENABLE_ONEDNN_OPTS'] = '0'\nimport tensorflow\n"
              "del os.environ['TF_ENABLE_ONEDNN_OPTS']\nimport tf_netvlad")
    warned = _run(before, tmp_path)
    assert warned == ["TensorFlow's oneDNN CPU kernels are off because TensorFlow was imported before "
                      "tf_netvlad could turn them on; training steps may take up to 1.7x as long. Import "
                      "tf_netvlad before tensorflow and keras, or set TF_ENABLE_ONEDNN_OPTS=1 before "
                      "Python starts."]


def test_tf_netvlad_imported_first_is_not_warned(tmp_path):
    assert _run("import tf_netvlad\nimport tensorflow", tmp_path) == []


def test_kernels_switched_off_by_the_user_are_not_warned(tmp_path):
    assert _run("import tensorflow\nimport tf_netvlad", tmp_path, TF_ENABLE_ONEDNN_OPTS="0") == []
