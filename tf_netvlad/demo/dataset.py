"""A small, deterministic, street-like place-recognition dataset (NumPy + PIL, no TensorFlow).

Each split is a "town" of parallel straight streets, > 1 km away from the other towns. Every
street is lined with procedurally generated buildings (wall colour and texture, window grids
of different spacing and shape, shop signs, awnings, doors, cornices, gables), trees and
lamp posts. A pinhole camera driving along the street looks at the facades obliquely and
renders them by ray casting (facade plane, ground plane, kerb-side billboards, sky), so
nearby positions see overlapping facade strips with real perspective and parallax.

Database images: summer day, clear weather, one every `db_spacing_m` metres, fixed camera.
Queries: random position / lateral offset / height / yaw / pitch / roll / zoom (their spread
scaled by `viewpoint`), and random illumination (day, dusk, night with lit windows and lamps),
season (summer, autumn, winter with snow), weather (clear, rain, fog) and occlusion (parked
cars, vans, pedestrians), drawn from a condition mix. The facade geometry is what stays.
The streets are built in `tf_netvlad.demo.scene` and drawn by `tf_netvlad.demo.render`.

Configurations (`CONFIGS`, `--config NAME`): "demo" is the dataset the CPU recipe
(`training.config.CPU_RECIPE`) was tuned on. "small" and "other" are held out, never used
for tuning: other towns (seed, street layout, database spacing), image sizes, condition mixes
and viewpoint changes, one of them with 400 training queries, so that a recipe can be shown
to work on data it was not tuned on. Every size, the seed, the image size, the condition mix
and the viewpoint spread can be overridden; the output is a deterministic function of the
resolved parameters, which `manifest.json` records.

Run `generate_demo_data(out_dir, config="demo")`, or `tf_netvlad demo-data --out DIR`.
"""

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from tf_netvlad.data import places
from tf_netvlad.data.split_files import write_csv, write_mat
from tf_netvlad.defaults import DEMO_IMAGE_SIZE, NON_TRIV_POS_DIST_SQ_THR_M2, POS_DIST_THR_M
from tf_netvlad.demo.render import render_view
from tf_netvlad.demo.scene import ACCENT_PALETTE, Street

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
    mix = _mix_by_name(base) if isinstance(base, str) else _canonical_mix(base)
    if spec is None:
        return mix
    if isinstance(spec, dict):
        return _canonical_mix(spec)
    items = [item.strip() for item in str(spec).split(",") if item.strip()]
    if not items:
        raise ValueError(f"`conditions` is empty: give a mix name ({', '.join(CONDITION_MIXES)}) "
                         "or tokens like 'day:0.5,night:0.5,fog:0.2'.")
    if items[0] in CONDITION_MIXES:
        mix = _mix_by_name(items.pop(0))
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


def _mix_by_name(name):
    if name not in CONDITION_MIXES:
        raise ValueError(f"Unknown condition mix {name!r}. Mixes: {', '.join(CONDITION_MIXES)}.")
    return _canonical_mix(CONDITION_MIXES[name])


def _canonical_mix(mix):
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


def _check_int(name, value, minimum):
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
            db = _check_int(f"{name}_db", db, min_db)
            streets = max(1, min(streets, db // min_db))
            streets = max(streets, int(math.ceil(db * db_spacing_m / MAX_STREET_M)))
            n_db = [db // streets + (k < db % streets) for k in range(streets)]
            lengths = [n * db_spacing_m for n in n_db]
        queries = sizes.get(f"{name}_queries")
        if queries is None:
            queries = max(5, int(round(spec["queries"] * scale)))
        out[name] = dict(origin=spec["origin"], heading=spec["heading"], streets=streets,
                         lengths=lengths, n_db=n_db,
                         queries=_check_int(f"{name}_queries", queries, 1))
    _separate_towns(out, base["street_spacing_m"])
    return out


def _town_box(spec, street_spacing_m, origin):
    """Axis-aligned box (min_e, min_n, max_e, max_n) around every camera of a town."""
    corners = []
    for k, length in enumerate(spec["lengths"]):
        start, along, across = _street_frame(spec["heading"], origin, street_spacing_m, k)
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
_LEGACY_PARAMS = {"config": "demo", "sizes": {}, "viewpoint": 1.0,
                  "conditions": {k: list(v) if isinstance(v, tuple) else v
                                 for k, v in CONDITION_MIXES["demo"].items()}}


# -------------------------------------------------------------------------- cameras
def _db_camera(x, image_size):
    return dict(x=x, y=0.0, h=1.8, yaw=np.radians(20.0), pitch=np.radians(12.0), roll=0.0,
                focal=0.8 * image_size[1])


def _spread(u, mid, factor):
    """`u` drawn around `mid`, its deviation scaled by `factor` (exactly `u` for factor 1)."""
    return u if factor == 1.0 else mid + factor * (u - mid)


def _query_camera(rng, length_m, image_size, viewpoint=1.0):
    """A query camera; `viewpoint` scales the spread of every pose change around the database's."""
    f = viewpoint
    return dict(x=rng.uniform(10, length_m - 10), y=_spread(rng.uniform(-3.0, 3.5), 0.25, f),
                h=_spread(rng.uniform(1.3, 2.3), 1.8, f), yaw=np.radians(20 + f * rng.uniform(-15, 15)),
                pitch=np.radians(12 + f * rng.uniform(-5, 5)), roll=np.radians(f * rng.uniform(-4, 4)),
                focal=0.8 * image_size[1] * _spread(rng.uniform(0.85, 1.25), 1.05, f))


def _occluders(rng, cam, n_cars, n_peds):
    cars, peds = [], []
    for _ in range(n_cars):
        kind = "van" if rng.random() < 0.25 else "car"
        cars.append((kind, cam["x"] + rng.uniform(-2, 12), rng.uniform(4.0, 5.5) * (1.3 if kind == "van" else 1),
                     tuple(ACCENT_PALETTE[rng.integers(len(ACCENT_PALETTE))] * rng.uniform(0.6, 1.0))))
    for _ in range(n_peds):
        peds.append(("ped", cam["x"] + rng.uniform(-2, 12), 0.0,
                     tuple(rng.uniform(0.05, 0.7, 3))))
    return cars, peds


def _query_condition(rng, salt, mix=None):
    mix = mix or _mix_by_name("demo")
    illum = ILLUMINATIONS[rng.choice(3, p=mix["illumination"])]
    season = SEASONS[rng.choice(3, p=mix["season"])]
    occluded = rng.random() < mix["occluded"]
    weather = "clear"
    if mix["weather"][0] < 1:  # drawn only when the mix has weather: the demo's draws stay as they were
        weather = WEATHERS[rng.choice(3, p=mix["weather"])]
    return dict(illumination=illum, season=season, occluded=occluded, salt=salt, weather=weather,
                exposure=rng.uniform(0.8, 1.2), white_balance=rng.uniform(0.9, 1.1, 3),
                noise=0.02 if illum == "night" else 0.006)


def condition_string(cond):
    """`"<illumination>;<season>[;rain|fog][;occluded]"`, the `conditions` column of the query CSV."""
    weather = [cond["weather"]] if cond.get("weather", "clear") != "clear" else []
    return ";".join([cond["illumination"], cond["season"]] + weather + (["occluded"] if cond["occluded"] else []))


# -------------------------------------------------------------------------- dataset
def _street_frame(heading, origin, street_spacing_m, k):
    th = np.radians(heading)
    along = np.array([np.cos(th), np.sin(th)])
    across = np.array([-np.sin(th), np.cos(th)])
    start = np.asarray(origin) + k * street_spacing_m * across
    return start, along, across


def _utm_filename(idx, east, north, kind):
    return f"@{east:.2f}@{north:.2f}@18@T@@@{kind}{idx:05d}@@@@@@@@.jpg"


def _split_jobs(split_idx, spec, params):
    """Every image of a split as (role, index within the role, street, db position or None)."""
    lengths = spec["street_lengths_m"]
    jobs = []
    for k, n_per in enumerate(spec["db_per_street"]):
        for j in range(n_per):
            jobs.append(("db", len(jobs), k, (j + 0.5) * params["db_spacing_m"]))
    q_rng = np.random.default_rng([params["seed"], split_idx, 2])
    if len(set(lengths)) == 1:
        q_street = q_rng.integers(len(lengths), size=spec["queries"])
    else:  # uniform over the streets' total length
        q_street = q_rng.choice(len(lengths), size=spec["queries"], p=np.asarray(lengths) / sum(lengths))
    return jobs + [("query", i, int(k), None) for i, k in enumerate(q_street)]


def _render_street(split_name, split_idx, spec, params, out_root, k, jobs, tick=None):
    """Builds street `k` and renders and writes its images; returns a record per image.

    Each image's random generator depends only on (seed, split, role, index), and the street's on
    (seed, split, street), so streets can be rendered in any order or process with the same bytes.
    """
    from PIL import Image
    seed, image_size = params["seed"], tuple(params["image_size"])
    street = Street(np.random.default_rng([seed, split_idx, 1000 + k]), spec["street_lengths_m"][k])
    start, along, across = _street_frame(spec["heading"], spec["origin"],
                                         CONFIGS[params["config"]]["street_spacing_m"], k)
    mix = _canonical_mix(params["conditions"])
    records = []
    for role, i, _, x in jobs:
        rng = np.random.default_rng([seed, split_idx, 3 if role == "db" else 4, i])
        condition = None
        if role == "db":
            cam = _db_camera(x, image_size)
            cam["y"] = rng.uniform(-0.4, 0.4)
            cond = dict(illumination="day", season="summer", occluded=False, salt=0, weather="clear",
                        exposure=rng.uniform(0.9, 1.1), white_balance=rng.uniform(0.96, 1.04, 3),
                        noise=0.004)
            cars, peds = _occluders(rng, cam, int(rng.random() < 0.25), 0)
        else:
            cam = _query_camera(rng, spec["street_lengths_m"][k], image_size, params["viewpoint"])
            cond = _query_condition(rng, salt=int(rng.integers(2 ** 30)), mix=mix)
            if cond["occluded"]:
                cars, peds = _occluders(rng, cam, int(rng.integers(1, 4)), int(rng.integers(0, 4)))
            else:
                cars, peds = _occluders(rng, cam, int(rng.random() < 0.2), 0)
            condition = condition_string(cond)
        cond["cars"], cond["ped"] = cars, peds
        pixels = render_view(street, cam, cond, rng, image_size)
        east, north = start + cam["x"] * along + cam["y"] * across
        sub = "database" if role == "db" else "queries"
        path = f"images/{split_name}/{sub}/{_utm_filename(i, east, north, 'd' if role == 'db' else 'q')}"
        Image.fromarray(pixels).save(out_root / path, quality=params["jpeg_quality"])
        records.append((role, i, path, float(east), float(north), condition))
        if tick is not None:
            tick()
    return records


def _generate_split(split_name, split_idx, spec, params, out_root, progress, workers=1):
    jobs = _split_jobs(split_idx, spec, params)
    for sub in ("database", "queries"):
        (out_root / "images" / split_name / sub).mkdir(parents=True, exist_ok=True)
    by_street = {}
    for job in jobs:
        by_street.setdefault(job[2], []).append(job)
    args = [(split_name, split_idx, spec, params, out_root, k, street_jobs)
            for k, street_jobs in sorted(by_street.items())]
    bar = progress(total=len(jobs), desc=f"demo {split_name}")
    records = []
    if workers > 1 and len(args) > 1 and len(jobs) >= 200:
        import concurrent.futures
        import multiprocessing

        # spawn: safe in a process that has loaded TensorFlow (a fork would copy its threads)
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(args)),
                                                    mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in pool.map(_render_street, *zip(*args)):
                records += done
                bar.update(len(done))
    else:
        for a in args:
            records += _render_street(*a, tick=lambda: bar.update(1))
    bar.close()
    records.sort(key=lambda r: (r[0] != "db", r[1]))
    db = [r for r in records if r[0] == "db"]
    queries = [r for r in records if r[0] == "query"]
    return places.PlaceSplit(
        name=f"demo_{split_name}", db_paths=[r[2] for r in db], db_utm=np.array([r[3:5] for r in db]),
        query_paths=[r[2] for r in queries], query_utm=np.array([r[3:5] for r in queries]).reshape(-1, 2),
        query_conditions=[r[5] for r in queries], pos_dist_thr=POS_DIST_THR_M,
        non_triv_pos_dist_sq_thr=NON_TRIV_POS_DIST_SQ_THR_M2,
        root=str(out_root))


def _result_paths(out_dir):
    out = {"root": out_dir, "manifest": out_dir / "manifest.json", "readme": out_dir / "README.txt"}
    for name in SPLIT_NAMES:
        out[f"{name}_mat"] = out_dir / f"demo_{name}.mat"
        out[f"{name}_csv"] = out_dir / f"demo_{name}.csv"
    return out


def _count_files(root):
    return sum(len(files) for _, _, files in os.walk(root))


def _is_complete(out_dir, params):
    """True when `out_dir` holds every file of a dataset generated with exactly `params`."""
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if "config" not in manifest:  # written before configurations existed: the demo's layout
        manifest = dict(_LEGACY_PARAMS, layout=params["layout"], **manifest)
    if {k: manifest.get(k) for k in params} != json.loads(json.dumps(params)):
        return False
    return _count_files(out_dir) == manifest.get("file_count")


def read_params(out_dir):
    """The generation parameters recorded in a generated dataset's `manifest.json` (or None).

    `generate_demo_data(out_dir, **read_params(out_dir))` reuses a dataset whatever its
    configuration, instead of regenerating it with the defaults.
    """
    try:
        manifest = json.loads((Path(out_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    manifest = dict(_LEGACY_PARAMS, **manifest)
    return {"config": manifest["config"], "seed": manifest.get("seed"),
            "image_size": tuple(manifest.get("image_size", DEMO_IMAGE_SIZE)),
            "scale": manifest.get("scale", 1.0), "db_spacing_m": manifest.get("db_spacing_m"),
            "jpeg_quality": manifest.get("jpeg_quality", 75), "sizes": manifest["sizes"],
            "conditions": manifest["conditions"], "viewpoint": manifest["viewpoint"]}


def _looks_like_ours(out_dir):
    ours = {"images", "manifest.json", "README.txt"} | {f"demo_{n}.{e}" for n in SPLIT_NAMES for e in ("mat", "csv")}
    return all(p.name in ours for p in out_dir.iterdir())


def _remove_stale_temp_dirs(out_dir):
    """Delete `.<name>.tmp-<pid>` / `.<name>.old-<pid>` left by interrupted runs (dead pids)."""
    for p in out_dir.parent.glob(f".{out_dir.name}.*-*"):
        kind, _, pid = p.name[len(out_dir.name) + 2:].partition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or not p.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
            alive = int(pid) != os.getpid()
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(p, ignore_errors=True)


def generate_demo_data(out_dir, seed=None, image_size=None, scale=1.0, db_spacing_m=None,
                       jpeg_quality=75, progress=True, config="demo", sizes=None, conditions=None,
                       viewpoint=None, workers=1):
    """Generate a demo dataset into `out_dir` (a no-op when it is already complete).

    Every argument left at None takes the configuration's value (`CONFIGS[config]`).

    Args:
        out_dir: output directory; created atomically (generated in a sibling temp directory,
            then renamed), so an interrupted run never leaves a dataset that looks complete. An
            existing dataset generated with other parameters is replaced.
        seed: random seed (towns, queries, conditions); the same parameters give byte-identical
            files.
        image_size: (H, W) of the JPEG images.
        scale: multiplies the configuration's street lengths / database sizes and query counts
            (e.g. 0.1 for tests); `sizes` are absolute, not scaled.
        db_spacing_m: distance between consecutive database images along a street (<= 10 m).
        jpeg_quality: JPEG quality of the images.
        progress: show tqdm progress bars.
        config: a name of `CONFIGS`: "demo" (the CPU recipe was tuned on it), or the held-out
            "small" and "other".
        sizes: overrides of the numbers of images, a dict with any of `train_db`, `train_queries`,
            `val_db`, `val_queries`, `test_db`, `test_queries`.
        conditions: the query condition mix, a name of `CONDITION_MIXES`, a token string like
            "day:0.5,night:0.5,fog:0.2" or a dict (see `parse_conditions`); default: the
            configuration's.
        viewpoint: multiplies the spread of the query poses (lateral offset, height, yaw, pitch,
            roll, zoom) around the database camera's; 1 = the demo's, at most 2.
        workers: processes rendering streets in parallel (the files are the same for any number).

    Returns:
        dict of paths: `root`, `manifest`, `readme` and `<split>_mat` / `<split>_csv` for the
        splits `train`, `val`, `test` (load them with `tf_netvlad.data.places.load_split`).

    Raises:
        ValueError: a parameter out of range (before anything is written).
        FileExistsError: `out_dir` exists and is not a generated dataset.
    """
    params = resolve_params(config=config, seed=seed, image_size=image_size, scale=scale,
                            db_spacing_m=db_spacing_m, jpeg_quality=jpeg_quality, sizes=sizes,
                            conditions=conditions, viewpoint=viewpoint)
    workers = _check_int("workers", workers, 1)
    out_dir = Path(out_dir).absolute()
    if _is_complete(out_dir, params):
        return _result_paths(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or not _looks_like_ours(out_dir)):
        raise FileExistsError(f"`out_dir` {str(out_dir)!r} exists and is not a tf_netvlad demo "
                              "dataset; choose a new or empty directory.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_dataset(tmp, params, progress, workers)
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _result_paths(out_dir)


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _write_dataset(root, params, progress, workers):
    if progress:
        from tqdm.auto import tqdm

        def bar(total, desc):
            return tqdm(total=total, desc=desc, unit="img", leave=False, mininterval=1.0)
    else:
        def bar(total, desc):
            return _NoBar()
    root.mkdir(parents=True)
    splits = {}
    for idx, name in enumerate(SPLIT_NAMES):
        split = _generate_split(name, idx, params["layout"][name], params, root, bar, workers)
        write_mat(split, root / f"demo_{name}.mat", which_set=name)
        write_csv(split, root / f"demo_{name}.csv")
        splits[name] = split
    (root / "README.txt").write_text(_readme(splits, params))
    manifest = dict(params)
    manifest["splits"] = {n: {"db": s.num_db, "queries": s.num_queries} for n, s in splits.items()}
    manifest["file_count"] = _count_files(root) + 1
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _mix_text(mix):
    parts = []
    for group, values in CONDITION_GROUPS.items():
        parts.append(" / ".join(f"{v} {p:.0%}" for v, p in zip(values, mix[group]) if p > 0))
    return parts + [f"occluded {mix['occluded']:.0%}"]


def _mix_tokens(mix):
    """The `--conditions` value of `mix`: its name if it is a named mix, else its tokens."""
    for name in CONDITION_MIXES:
        if _mix_by_name(name) == _canonical_mix(mix):
            return name
    return ",".join([f"{v}:{p:.6g}" for group, values in CONDITION_GROUPS.items()
                     for v, p in zip(values, mix[group])] + [f"occluded:{mix['occluded']:.6g}"])


def _readme(splits, params):
    config = CONFIGS[params["config"]]
    f = params["viewpoint"]
    illumination, season, weather, occluded = _mix_text(params["conditions"])
    overrides = "".join(f" --{k.replace('_', '-')} {v}" for k, v in params["sizes"].items())
    overrides += f" --conditions {_mix_tokens(params['conditions'])}"
    lines = [
        "tf_netvlad demo place-recognition dataset",
        "=========================================",
        "",
        f"Generated by tf_netvlad.demo.dataset (version {params['version']}), configuration "
        f"{params['config']!r}: {config['description']}.",
        f"Seed {params['seed']}, image size {params['image_size'][0]}x{params['image_size'][1]} (HxW), "
        f"scale {params['scale']}. Regenerate with:",
        f"  tf_netvlad demo-data --out DIR --config {params['config']} --seed {params['seed']} "
        f"--image-size {params['image_size'][0]} {params['image_size'][1]} --scale {params['scale']:g} "
        f"--db-spacing {params['db_spacing_m']:g} --viewpoint {f:g}{overrides}",
        "",
        "Synthetic streets: each split is a town of parallel streets lined with procedural",
        "buildings (window grids, shop signs, awnings, doors, cornices, gables), trees and lamp",
        "posts. The towns are > 1 km apart and have different buildings.",
        "",
        f"Database: summer day, clear weather, one image every {params['db_spacing_m']:g} m, fixed",
        "camera (20 deg yaw towards the facade, 12 deg pitch), occasional parked car.",
        f"Queries: random position on the street, lateral offset {0.25 - 3.25 * f:+.1f}..{0.25 + 3.25 * f:+.1f} m, "
        f"height {1.8 - 0.5 * f:.1f}-{1.8 + 0.5 * f:.1f} m,",
        f"yaw +-{15 * f:.0f} deg, pitch +-{5 * f:.0f} deg, roll +-{4 * f:.0f} deg, zoom "
        f"{1.05 - 0.2 * f:.2f}-{1.05 + 0.2 * f:.2f}, and random conditions:",
        f"  illumination {illumination}",
        "    (dusk: warm cast, some lit windows; night: dark, lit windows, lit signs and lamps);",
        f"  season {season}",
        "    (autumn: orange foliage, leaves; winter: bare trees, snow, overcast sky);",
        f"  weather {weather}",
        "    (rain: overcast, streaks, wet ground, haze; fog: contrast lost with distance);",
        f"  {occluded} (cars, vans, pedestrians in front of the facade).",
        "",
        "Files (paths in the split files are relative to this directory):",
    ]
    for name, split in splits.items():
        layout = params["layout"][name]
        lengths = layout["street_lengths_m"]
        span = f"{min(lengths):g}" + (f"-{max(lengths):g}" if max(lengths) > min(lengths) else "")
        lines.append(f"  demo_{name}.mat / demo_{name}.csv: {split.num_db} db, {split.num_queries} "
                     f"queries, {len(lengths)} streets x {span} m")
    lines += [
        "  images/<split>/database|queries/@easting@northing@18@T@@@<id>@@@@@@@@.jpg",
        "",
        "The .mat files are NetVLAD dbStruct files (posDistThr 25 m, nonTrivPosDistSqThr 100 m^2).",
        "The CSV manifests have columns path, role (db|query), easting, northing, conditions;",
        "conditions is '<day|dusk|night>;<summer|autumn|winter>[;rain|fog][;occluded]' for queries.",
        "Load with tf_netvlad.data.places.load_split('demo_test.mat').",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------- raw-pixel baseline
def _thumbnails(paths, size, grey, center):
    from PIL import Image
    out = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("L" if grey else "RGB").resize(size, Image.BILINEAR)
            out.append(np.asarray(im, np.float32).reshape(-1))
    x = np.stack(out)
    if center:
        x -= x.mean(axis=1, keepdims=True)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def raw_pixel_recall(split, root=None, ns=(1, 5, 10), size=(16, 12), grey=True, center=False):
    """Recall@N of nearest-neighbour search on L2-normalised raw-pixel thumbnails.

    A baseline that a learnt descriptor should beat. `size` is the thumbnail (W, H); `center`
    subtracts each thumbnail's mean first. Positives: db images within `split.pos_dist_thr`.
    Returns {N: recall} over all queries.
    """
    db = _thumbnails(split.db_image_paths(root), size, grey, center)
    q = _thumbnails(split.query_image_paths(root), size, grey, center)
    n_max = min(max(ns), split.num_db)
    ranked = np.argsort(-(q @ db.T), axis=1, kind="stable")[:, :n_max]
    positives = split.positives()
    hit = np.array([np.isin(ranked[i], positives[i]) for i in range(split.num_queries)])
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), n_max)
    return {int(n): float(np.mean(first < n)) for n in ns}
