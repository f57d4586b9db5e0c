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
The streets are built in `tf_netvlad.demo.scene` and drawn by `tf_netvlad.demo.render`; the
output folder's manifest, README and completeness check are `tf_netvlad.demo.folder`.

The configurations ("demo", the held-out "small" and "other") and the condition mixes are
`tf_netvlad.demo.configs`; the output is a deterministic function of the resolved parameters
(`configs.resolve_params`), which `manifest.json` records. The raw-pixel baseline is
`tf_netvlad.demo.baseline`.

Run `generate_demo_data(out_dir, config="demo")`, or `tf_netvlad demo-data --out DIR`.
"""

import os
import shutil
from pathlib import Path

import numpy as np

from tf_netvlad.data import places
from tf_netvlad.data.dbstruct import write_mat
from tf_netvlad.data.split_files import write_csv
from tf_netvlad.defaults import NON_TRIV_POS_DIST_SQ_THR_M2, POS_DIST_THR_M
from tf_netvlad.demo import folder
from tf_netvlad.demo.configs import (
    CONFIGS,
    ILLUMINATIONS,
    SEASONS,
    SPLIT_NAMES,
    WEATHERS,
    canonical_mix,
    check_int,
    mix_by_name,
    resolve_params,
    street_frame,
)
from tf_netvlad.demo.render import render_view
from tf_netvlad.demo.scene import ACCENT_PALETTE, Street


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
    mix = mix or mix_by_name("demo")
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
    start, along, across = street_frame(spec["heading"], spec["origin"],
                                         CONFIGS[params["config"]]["street_spacing_m"], k)
    mix = canonical_mix(params["conditions"])
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
        splits `train`, `val`, `test` (load them with `tf_netvlad.load_split`).

    Raises:
        ValueError: a parameter out of range (before anything is written).
        FileExistsError: `out_dir` exists and is not a generated dataset.
    """
    params = resolve_params(config=config, seed=seed, image_size=image_size, scale=scale,
                            db_spacing_m=db_spacing_m, jpeg_quality=jpeg_quality, sizes=sizes,
                            conditions=conditions, viewpoint=viewpoint)
    workers = check_int("workers", workers, 1)
    out_dir = Path(out_dir).absolute()
    if folder.is_complete(out_dir, params):
        return folder.result_paths(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or not folder.looks_like_ours(out_dir)):
        raise FileExistsError(f"`out_dir` {str(out_dir)!r} exists and is not a tf_netvlad demo "
                              "dataset; choose a new or empty directory.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    folder.remove_stale_temp_dirs(out_dir)
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
    return folder.result_paths(out_dir)


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
    folder.write_readme(root, splits, params)
    folder.write_manifest(root, splits, params)
