"""Tests for tf_netvlad.demo.configs: condition mixes by hand, and the configurations' layouts."""

import pytest

from tf_netvlad.demo import configs


def test_parse_conditions_hand_computed():
    demo = configs.parse_conditions(None)
    assert demo == {"illumination": (0.4, 0.25, 0.35), "season": (0.35, 0.3, 0.35),
                    "weather": (1.0, 0.0, 0.0), "occluded": 0.4}
    mix = configs.parse_conditions("day:2,night:1")
    assert mix["illumination"] == pytest.approx((2 / 3, 0.0, 1 / 3))
    assert mix["season"] == demo["season"] and mix["occluded"] == 0.4
    mix = configs.parse_conditions("dark,clear:0.5,fog:0.5,occluded:0")
    assert mix["weather"] == (0.5, 0.0, 0.5) and mix["occluded"] == 0.0
    assert mix["illumination"] == configs.CONDITION_MIXES["dark"]["illumination"]
    assert configs.parse_conditions("fog", base="weather")["weather"] == (0.0, 0.0, 1.0)
    for bad, message in (("sunny", "unknown token 'sunny'"), ("day:-1", "must be >= 0"),
                         ("occluded:2", "probability"), ("day:0", "sum to 0"), ("day:x", "number")):
        with pytest.raises(ValueError, match=message):
            configs.parse_conditions(bad)


def test_presets_keep_their_towns_and_large_sizes_move_them_apart():
    def gaps(params):
        boxes = {n: configs._town_box(dict(heading=s["heading"], lengths=s["street_lengths_m"]),
                                      configs.CONFIGS[params["config"]]["street_spacing_m"], s["origin"])
                 for n, s in params["layout"].items()}
        return [configs._box_gap(boxes[a], boxes[b]) for a, b in (("train", "val"), ("train", "test"),
                                                                  ("val", "test"))]

    for name, config in configs.CONFIGS.items():
        params = configs.resolve_params(config=name)
        assert min(gaps(params)) >= 1000, name
        for split, spec in config["splits"].items():
            assert params["layout"][split]["origin"] == list(spec["origin"])
            if "db" in spec:
                assert sum(params["layout"][split]["db_per_street"]) == spec["db"]
            assert params["layout"][split]["queries"] == spec["queries"]
    assert configs.resolve_params()["layout"]["train"]["db_per_street"] == [140] * 5  # 700 db
    assert [c["tuned"] for c in configs.CONFIGS.values()] == [True, False, False]
    assert configs.CONFIGS["small"]["splits"]["train"]["queries"] <= 400
    # 20,000 training db images: streets of at most 1.5 km, and the other towns moved away
    big = configs.resolve_params(config="small", sizes={"train_db": 20_000})
    assert max(big["layout"]["train"]["street_lengths_m"]) <= 1500
    assert sum(big["layout"]["train"]["db_per_street"]) == 20_000
    assert min(gaps(big)) >= 1000
