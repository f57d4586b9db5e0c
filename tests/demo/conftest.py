"""Fixtures of the demo tests: a generated dataset shared by the modules that read one."""

import pytest

SCALE = 0.15  # 5 + 2 + 3 streets of 63 / 45 / 45 m: 180 db images, 375 + 45 + 22 queries


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    from tf_netvlad.demo import dataset

    out = tmp_path_factory.mktemp("demo") / "data"
    return dataset.generate_demo_data(out, seed=0, scale=SCALE, progress=False)
