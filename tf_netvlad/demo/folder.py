"""The folder of a generated demo dataset on disk: its files, its manifest, its README.

A complete folder holds `images/`, the split files `demo_<split>.mat` / `demo_<split>.csv`,
`README.txt` and `manifest.json`, which records the generation parameters
(`configs.resolve_params`), the split sizes and the number of files. `is_complete` tells whether
a folder already holds the dataset of some parameters, `read_params` which parameters it was
generated with, `looks_like_ours` whether it may be replaced. `tf_netvlad.demo.dataset` renders
the images and writes the folder with these. No TensorFlow is imported.
"""

import json
import os
import shutil
from pathlib import Path

from tf_netvlad.data.locking import pid_alive
from tf_netvlad.defaults import DEMO_IMAGE_SIZE
from tf_netvlad.demo.configs import (
    CONDITION_GROUPS,
    CONDITION_MIXES,
    CONFIGS,
    LEGACY_PARAMS,
    SPLIT_NAMES,
    canonical_mix,
    mix_by_name,
)


# -------------------------------------------------------------------------- folder state
def result_paths(out_dir):
    """The paths `generate_demo_data` returns: root, manifest, readme and each split's mat / csv."""
    out = {"root": out_dir, "manifest": out_dir / "manifest.json", "readme": out_dir / "README.txt"}
    for name in SPLIT_NAMES:
        out[f"{name}_mat"] = out_dir / f"demo_{name}.mat"
        out[f"{name}_csv"] = out_dir / f"demo_{name}.csv"
    return out


def _count_files(root):
    return sum(len(files) for _, _, files in os.walk(root))


def is_complete(out_dir, params):
    """True when `out_dir` holds every file of a dataset generated with exactly `params`."""
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if "config" not in manifest:  # written before configurations existed: the demo's layout
        manifest = dict(LEGACY_PARAMS, layout=params["layout"], **manifest)
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
    manifest = dict(LEGACY_PARAMS, **manifest)
    return {"config": manifest["config"], "seed": manifest.get("seed"),
            "image_size": tuple(manifest.get("image_size", DEMO_IMAGE_SIZE)),
            "scale": manifest.get("scale", 1.0), "db_spacing_m": manifest.get("db_spacing_m"),
            "jpeg_quality": manifest.get("jpeg_quality", 75), "sizes": manifest["sizes"],
            "conditions": manifest["conditions"], "viewpoint": manifest["viewpoint"]}


def looks_like_ours(out_dir):
    """True when every entry of the directory `out_dir` is a file or folder a generated dataset has."""
    ours = {"images", "manifest.json", "README.txt"} | {f"demo_{n}.{e}" for n in SPLIT_NAMES for e in ("mat", "csv")}
    return all(p.name in ours for p in out_dir.iterdir())


def remove_stale_temp_dirs(out_dir):
    """Delete `.<name>.tmp-<pid>` / `.<name>.old-<pid>` left by interrupted runs (dead pids)."""
    for p in out_dir.parent.glob(f".{out_dir.name}.*-*"):
        kind, _, pid = p.name[len(out_dir.name) + 2:].partition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or not p.is_dir():
            continue
        if not pid_alive(pid) or int(pid) == os.getpid():
            shutil.rmtree(p, ignore_errors=True)


def write_manifest(root, splits, params):
    """Writes `manifest.json`: `params`, each split's sizes and the file count (itself included)."""
    manifest = dict(params)
    manifest["splits"] = {n: {"db": s.num_db, "queries": s.num_queries} for n, s in splits.items()}
    manifest["file_count"] = _count_files(root) + 1
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


# -------------------------------------------------------------------------- README.txt
def _mix_text(mix):
    parts = []
    for group, values in CONDITION_GROUPS.items():
        parts.append(" / ".join(f"{v} {p:.0%}" for v, p in zip(values, mix[group]) if p > 0))
    return parts + [f"occluded {mix['occluded']:.0%}"]


def _mix_tokens(mix):
    """The `--conditions` value of `mix`: its name if it is a named mix, else its tokens."""
    for name in CONDITION_MIXES:
        if mix_by_name(name) == canonical_mix(mix):
            return name
    return ",".join([f"{v}:{p:.6g}" for group, values in CONDITION_GROUPS.items()
                     for v, p in zip(values, mix[group])] + [f"occluded:{mix['occluded']:.6g}"])


def write_readme(root, splits, params):
    """Writes `README.txt`: how the dataset was generated, what its images show, its files."""
    (root / "README.txt").write_text("\n".join(_about_lines(params) + _file_lines(splits, params)))


def _about_lines(params):
    """The README up to its list of files: the generation command, the streets, the conditions."""
    config = CONFIGS[params["config"]]
    f = params["viewpoint"]
    illumination, season, weather, occluded = _mix_text(params["conditions"])
    overrides = "".join(f" --{k.replace('_', '-')} {v}" for k, v in params["sizes"].items())
    overrides += f" --conditions {_mix_tokens(params['conditions'])}"
    return [
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


def _file_lines(splits, params):
    """The README's list of files: each split's sizes and streets, the image names, the formats."""
    lines = []
    for name, split in splits.items():
        layout = params["layout"][name]
        lengths = layout["street_lengths_m"]
        span = f"{min(lengths):g}" + (f"-{max(lengths):g}" if max(lengths) > min(lengths) else "")
        lines.append(f"  demo_{name}.mat / demo_{name}.csv: {split.num_db} db, {split.num_queries} "
                     f"queries, {len(lengths)} streets x {span} m")
    return lines + [
        "  images/<split>/database|queries/@easting@northing@18@T@@@<id>@@@@@@@@.jpg",
        "",
        "The .mat files are NetVLAD dbStruct files (posDistThr 25 m, nonTrivPosDistSqThr 100 m^2).",
        "The CSV manifests have columns path, role (db|query), easting, northing, conditions;",
        "conditions is '<day|dusk|night>;<summer|autumn|winter>[;rain|fog][;occluded]' for queries.",
        "Load with tf_netvlad.load_split('demo_test.mat').",
        "",
    ]
