"""The generated datasets' configurations and query-condition mixes (NumPy only, no TensorFlow).

`CONFIGS` (`--config NAME`): "demo" is the dataset the CPU recipe (`training.config.CPU_RECIPE`)
was tuned on. "small" and "other" are held out, never used for tuning: other towns (seed, street
layout, database spacing), image sizes, condition mixes and viewpoint changes, one of them with
400 training queries, so that a recipe can be shown to work on data it was not tuned on. Every
size, the seed, the image size, the condition mix (`parse_conditions`) and the viewpoint spread
can be overridden; `resolve_params` validates them and fills in the configuration's values, and
`tf_netvlad.demo.dataset` generates the dataset those parameters describe.
"""

import math

import numpy as np

from tf_netvlad.defaults import DEMO_IMAGE_SIZE

DEMO_VERSION = 2  # 2: 2500 training and 300 validation queries (was 350 and 100)
SPLIT_NAMES = ("train", "val", "test")

# The "demo" configuration's towns: split -> (town origin easting/northing, street heading in
# degrees, streets, street length m, queries). Towns are > 1 km apart. The training town has many
# queries per place (2500 for 700 db images): a backbone trained from scratch learns far less from
# 350 (demo test recall@1 0.26 with 350 queries against 0.35 with 3000, same 3-minute recipe). The
# 300 validation queries make the best-epoch choice by val recall@5 less of a coin toss.
SPLITS = {
    "train": dict(origin=(540_000.0, 4_480_000.0), heading=15.0, streets=5, length_m=420.0,
                  queries=2500),
    "val": dict(origin=(546_000.0, 4_480_000.0), heading=-30.0, streets=2, length_m=300.0,
                queries=300),
    "test": dict(origin=(540_000.0, 4_486_000.0), heading=60.0, streets=3, length_m=300.0,
                 queries=150),
}
STREET_SPACING_M = 150.0

# ------------------------------------------------------------------------ conditions
ILLUMINATIONS = ("day", "dusk", "night")
SEASONS = ("summer", "autumn", "winter")
WEATHERS = ("clear", "rain", "fog")
CONDITION_GROUPS = {"illumination": ILLUMINATIONS, "season": SEASONS, "weather": WEATHERS}

# Named mixes of query conditions: per group the probability of each value (in the order of
# `CONDITION_GROUPS`), and the probability that a query is occluded (1-3 cars or vans and 0-3
# pedestrians in front of the facade; otherwise a parked car 20 % of the time).
CONDITION_MIXES = {
    # the demo's (tuned on): no weather
    "demo": {"illumination": (0.4, 0.25, 0.35), "season": (0.35, 0.3, 0.35),
             "weather": (1.0, 0.0, 0.0), "occluded": 0.4},
    # the "small" configuration's: more day and autumn, rain and fog on 30 % of the queries
    "weather": {"illumination": (0.45, 0.2, 0.35), "season": (0.3, 0.35, 0.35),
                "weather": (0.7, 0.15, 0.15), "occluded": 0.45},
    # the "other" configuration's: darker, more winter, more occluders and fog
    "dark": {"illumination": (0.3, 0.3, 0.4), "season": (0.2, 0.3, 0.5),
             "weather": (0.6, 0.15, 0.25), "occluded": 0.55},
    # no appearance change at all: only the viewpoint differs from the database (a sanity check)
    "clear": {"illumination": (1.0, 0.0, 0.0), "season": (1.0, 0.0, 0.0),
              "weather": (1.0, 0.0, 0.0), "occluded": 0.0},
}

# ---------------------------------------------------------------------- configurations
# name -> every generation parameter. A split gives its street count and either `length_m` per
# street (the demo's original form) or `db` images in all (split over the streets, whose lengths
# follow); `queries` per split. Nothing but "demo" was looked at while tuning the CPU recipe.
CONFIGS = {
    "demo": dict(
        description="the demo dataset; the CPU recipe was tuned on it",
        tuned=True, seed=0, image_size=DEMO_IMAGE_SIZE, db_spacing_m=3.0,
        street_spacing_m=STREET_SPACING_M, conditions="demo", viewpoint=1.0, splits=SPLITS),
    "small": dict(
        description="held out (not used for tuning): 400 training queries for 2,000 database "
                    "images, 180x240 photos, rain and fog, 1.3x the viewpoint change",
        tuned=False, seed=11, image_size=(180, 240), db_spacing_m=3.0, street_spacing_m=110.0,
        conditions="weather", viewpoint=1.3, splits={
            "train": dict(origin=(585_000.0, 4_510_000.0), heading=-70.0, streets=8, db=2000,
                          queries=400),
            "val": dict(origin=(592_000.0, 4_512_000.0), heading=35.0, streets=4, db=500,
                        queries=100),
            "test": dict(origin=(588_000.0, 4_518_000.0), heading=100.0, streets=5, db=1000,
                         queries=200),
        }),
    "other": dict(
        description="held out (not used for tuning): 1,200 training queries, a database image "
                    "every 4 m, 120x160 photos, darker and foggier, 1.2x the viewpoint change",
        tuned=False, seed=7, image_size=(120, 160), db_spacing_m=4.0, street_spacing_m=200.0,
        conditions="dark", viewpoint=1.2, splits={
            "train": dict(origin=(612_000.0, 4_455_000.0), heading=40.0, streets=6, db=1200,
                          queries=1200),
            "val": dict(origin=(606_000.0, 4_447_000.0), heading=-10.0, streets=3, db=400,
                        queries=200),
            "test": dict(origin=(619_000.0, 4_447_000.0), heading=75.0, streets=4, db=600,
                         queries=200),
        }),
}

MIN_STREET_M = 30.0  # queries stay 10 m from a street's ends
MAX_STREET_M = 1500.0  # longer streets are split into more streets
MAX_DB_SPACING_M = 10.0  # every query keeps a database image within 10 m (a training positive)
MAX_VIEWPOINT = 2.0  # the camera stays in front of the parked cars
MIN_TOWN_GAP_M = 1000.0
SIZE_KEYS = tuple(f"{split}_{what}" for split in SPLIT_NAMES for what in ("db", "queries"))


# ------------------------------------------------------------------- parameter parsing
def parse_conditions(spec, base="demo"):
    """A condition mix from a mix name, a token list or a dict (see `CONDITION_MIXES`).

    `spec` is a name of `CONDITION_MIXES`, or comma-separated `token[:weight]` items that start
    from `base` (a mix or its name) and may begin with a mix name to start from instead:
    `"night"` (every query at night), `"day:2,night:1"` (2/3 day, 1/3 night),
    `"dark,clear:0.5,fog:0.5,occluded:0"`. A group (illumination, season, weather) that gets any
    token is replaced by the listed weights normalised to sum 1 (unlisted values get 0); the
    other groups keep `base`'s. `occluded:P` sets the probability of occluders (0..1).

    Returns:
        dict `{"illumination": (p_day, p_dusk, p_night), "season": (...), "weather": (...),
        "occluded": p}`.
    """
    mix = mix_by_name(base) if isinstance(base, str) else canonical_mix(base)
    if spec is None:
        return mix
    if isinstance(spec, dict):
        return canonical_mix(spec)
    items = [item.strip() for item in str(spec).split(",") if item.strip()]
    if not items:
        raise ValueError(f"`conditions` is empty: give a mix name ({', '.join(CONDITION_MIXES)}) "
                         "or tokens like 'day:0.5,night:0.5,fog:0.2'.")
    if items[0] in CONDITION_MIXES:
        mix = mix_by_name(items.pop(0))
    weights = {}
    for item in items:
        token, _, value = item.partition(":")
        token = token.strip().lower()
        group = _token_group(token, spec)
        try:
            weight = float(value) if value else 1.0
        except ValueError:
            raise ValueError(f"`conditions` item {item!r}: the weight must be a number.") from None
        if not (weight >= 0 and math.isfinite(weight)) or (group == "occluded" and weight > 1):
            raise ValueError(f"`conditions` item {item!r}: weights must be >= 0 (occluded: a "
                             "probability in 0..1).")
        if group == "occluded":
            mix["occluded"] = weight
        else:
            weights.setdefault(group, dict.fromkeys(CONDITION_GROUPS[group], 0.0))[token] = weight
    for group, values in weights.items():
        total = sum(values.values())
        if total <= 0:
            raise ValueError(f"`conditions` {spec!r}: the {group} weights sum to 0.")
        mix[group] = tuple(values[v] / total for v in CONDITION_GROUPS[group])
    return mix


def _token_group(token, spec):
    if token == "occluded":
        return "occluded"
    for group, values in CONDITION_GROUPS.items():
        if token in values:
            return group
    valid = [v for values in CONDITION_GROUPS.values() for v in values] + ["occluded"]
    raise ValueError(f"`conditions` {spec!r}: unknown token {token!r}. Tokens: {', '.join(valid)}; "
                     f"mixes: {', '.join(CONDITION_MIXES)}.")


def mix_by_name(name):
    if name not in CONDITION_MIXES:
        raise ValueError(f"Unknown condition mix {name!r}. Mixes: {', '.join(CONDITION_MIXES)}.")
    return canonical_mix(CONDITION_MIXES[name])


def canonical_mix(mix):
    missing = (set(CONDITION_GROUPS) | {"occluded"}) - set(mix)
    if missing:
        raise ValueError(f"A condition mix needs the keys {', '.join(CONDITION_GROUPS)} and occluded; "
                         f"missing {sorted(missing)}.")
    out = {}
    for group, values in CONDITION_GROUPS.items():
        p = np.asarray(mix[group], np.float64)
        if p.shape != (len(values),) or (p < 0).any() or abs(p.sum() - 1) > 1e-6:
            raise ValueError(f"Condition mix {group!r} must be {len(values)} probabilities "
                             f"({', '.join(values)}) summing to 1. Received: {mix[group]!r}")
        out[group] = tuple(float(v) for v in p)
    occluded = float(mix["occluded"])
    if not 0 <= occluded <= 1:
        raise ValueError(f"Condition mix 'occluded' must be a probability. Received: {occluded!r}")
    out["occluded"] = occluded
    return out


def config_names():
    """The configuration names, "demo" first."""
    return tuple(CONFIGS)


def street_frame(heading, origin, street_spacing_m, k):
    """(start, along, across) of street `k` of a town: its first point and unit vectors (UTM m)."""
    th = np.radians(heading)
    along = np.array([np.cos(th), np.sin(th)])
    across = np.array([-np.sin(th), np.cos(th)])
    start = np.asarray(origin) + k * street_spacing_m * across
    return start, along, across


def check_int(name, value, minimum):
    """`value` as an int, or ValueError naming `name` unless it is an integer >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, received {value!r}.")
    return int(value)


def _resolve_splits(config, scale, sizes, db_spacing_m):
    """Per split: origin, heading, per-street lengths and database counts, queries."""
    base = CONFIGS[config]
    unknown = set(sizes) - set(SIZE_KEYS)
    if unknown:
        raise ValueError(f"Unknown size keys {sorted(unknown)}; valid: {', '.join(SIZE_KEYS)}.")
    min_db = int(math.ceil(MIN_STREET_M / db_spacing_m))
    out = {}
    for name in SPLIT_NAMES:
        spec = base["splits"][name]
        streets = spec["streets"]
        db = sizes.get(f"{name}_db")
        if db is None and "length_m" in spec:  # the demo's form: a length per street, scaled
            length = max(MIN_STREET_M, round(spec["length_m"] * scale / 3) * 3)
            lengths = [float(length)] * streets
            n_db = [int(length // db_spacing_m)] * streets
        else:
            if db is None:
                db = max(min_db, int(round(spec["db"] * scale)))
            db = check_int(f"{name}_db", db, min_db)
            streets = max(1, min(streets, db // min_db))
            streets = max(streets, int(math.ceil(db * db_spacing_m / MAX_STREET_M)))
            n_db = [db // streets + (k < db % streets) for k in range(streets)]
            lengths = [n * db_spacing_m for n in n_db]
        queries = sizes.get(f"{name}_queries")
        if queries is None:
            queries = max(5, int(round(spec["queries"] * scale)))
        out[name] = dict(origin=spec["origin"], heading=spec["heading"], streets=streets,
                         lengths=lengths, n_db=n_db,
                         queries=check_int(f"{name}_queries", queries, 1))
    _separate_towns(out, base["street_spacing_m"])
    return out


def _town_box(spec, street_spacing_m, origin):
    """Axis-aligned box (min_e, min_n, max_e, max_n) around every camera of a town."""
    corners = []
    for k, length in enumerate(spec["lengths"]):
        start, along, across = street_frame(spec["heading"], origin, street_spacing_m, k)
        for s in (0.0, length):
            for y in (-10.0, 10.0):
                corners.append(start + s * along + y * across)
    corners = np.array(corners)
    return np.concatenate([corners.min(0), corners.max(0)])


def _box_gap(a, b):
    de = max(a[0] - b[2], b[0] - a[2], 0.0)
    dn = max(a[1] - b[3], b[1] - a[3], 0.0)
    return math.hypot(de, dn)


def _separate_towns(specs, street_spacing_m):
    """Keeps the configured town origins if the towns are >= 1 km apart, else lines them up
    west to east with 2 km between them (large size overrides)."""
    boxes = {n: _town_box(s, street_spacing_m, s["origin"]) for n, s in specs.items()}
    names = list(specs)
    if all(_box_gap(boxes[a], boxes[b]) >= MIN_TOWN_GAP_M for i, a in enumerate(names)
           for b in names[i + 1:]):
        return
    east = boxes[names[0]][2] + 2 * MIN_TOWN_GAP_M
    for name in names[1:]:
        box, origin = boxes[name], np.asarray(specs[name]["origin"])
        shift = np.array([east - box[0], boxes[names[0]][1] - box[1]])
        specs[name]["origin"] = tuple(float(v) for v in origin + shift)
        east = box[2] + shift[0] + 2 * MIN_TOWN_GAP_M


def resolve_params(config="demo", seed=None, image_size=None, scale=1.0, db_spacing_m=None,
                   jpeg_quality=75, sizes=None, conditions=None, viewpoint=None):
    """Every generation parameter, validated, with the configuration's values filled in.

    Returns the dict recorded in `manifest.json` (the dataset is regenerated when it differs).
    """
    if config not in CONFIGS:
        raise ValueError(f"Unknown demo data configuration {config!r}. Configurations: "
                         f"{', '.join(CONFIGS)}.")
    base = CONFIGS[config]
    seed = base["seed"] if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, received {seed!r}.")
    image_size = tuple(int(v) for v in (base["image_size"] if image_size is None else image_size))
    if len(image_size) != 2 or min(image_size) < 16:
        raise ValueError(f"`image_size` must be (H, W) with both >= 16, received {image_size}.")
    if not scale > 0:
        raise ValueError(f"`scale` must be > 0, received {scale!r}.")
    db_spacing_m = base["db_spacing_m"] if db_spacing_m is None else db_spacing_m
    if not 0 < db_spacing_m <= MAX_DB_SPACING_M:
        raise ValueError(f"`db_spacing_m` must be in (0, {MAX_DB_SPACING_M:g}] m so that every "
                         f"query has a database image within 10 m, received {db_spacing_m!r}.")
    viewpoint = base["viewpoint"] if viewpoint is None else viewpoint
    if not 0 <= viewpoint <= MAX_VIEWPOINT:
        raise ValueError(f"`viewpoint` must be in [0, {MAX_VIEWPOINT:g}] (1 = the demo's spread), "
                         f"received {viewpoint!r}.")
    mix = parse_conditions(conditions, base=base["conditions"])
    sizes = {k: v for k, v in (sizes or {}).items() if v is not None}
    splits = _resolve_splits(config, scale, sizes, float(db_spacing_m))
    return {"generator": "tf_netvlad.demo.dataset", "version": DEMO_VERSION, "config": config,
            "seed": int(seed), "image_size": list(image_size), "scale": float(scale),
            "db_spacing_m": float(db_spacing_m), "jpeg_quality": int(jpeg_quality),
            "sizes": {k: int(sizes[k]) for k in sorted(sizes)},
            "conditions": {k: list(v) if isinstance(v, tuple) else v for k, v in mix.items()},
            "viewpoint": float(viewpoint),
            "layout": {n: {"origin": list(s["origin"]), "heading": s["heading"],
                           "db_per_street": s["n_db"], "street_lengths_m": s["lengths"],
                           "queries": s["queries"]} for n, s in splits.items()}}


# Manifests written before the configurations existed (always the demo configuration) lack
# these keys; such a dataset is still complete for the same parameters.
LEGACY_PARAMS = {"config": "demo", "sizes": {}, "viewpoint": 1.0,
                  "conditions": {k: list(v) if isinstance(v, tuple) else v
                                 for k, v in CONDITION_MIXES["demo"].items()}}
