"""A small, deterministic, street-like place-recognition dataset (NumPy + PIL, no TensorFlow).

Each split is a "town" of parallel straight streets, > 1 km away from the other towns. Every
street is lined with procedurally generated buildings (wall colour and texture, window grids
of different spacing and shape, shop signs, awnings, doors, cornices, gables), trees and
lamp posts. A pinhole camera driving along the street looks at the facades obliquely and
renders them by ray casting (facade plane, ground plane, kerb-side billboards, sky), so
nearby positions see overlapping facade strips with real perspective and parallax.

Database images: summer day, one every `db_spacing_m` metres, fixed camera.
Queries: random position / lateral offset / height / yaw / pitch / roll / zoom, and random
illumination (day, dusk, night with lit windows and lamps), season (summer, autumn, winter
with snow) and occlusion (parked cars, vans, pedestrians). The facade geometry is what stays.

Run `generate_demo_data(out_dir)`, or `tf_netvlad demo-data --out DIR`.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np

from tf_netvlad import places

DEMO_VERSION = 2  # 2: 2500 training and 300 validation queries (was 350 and 100)
PX_PER_M = 10  # facade texture resolution
FACADE_HEIGHT_M = 32.0
FACADE_DIST_M = 12.0  # db camera -> facade plane
TREE_DEPTH_M = 2.5  # tree / lamp line in front of the facade
PED_DEPTH_M = 1.5  # pedestrians on the sidewalk
CAR_DEPTH_M = 4.5  # parked cars on the road
SIDEWALK_M = 3.5

# split -> (town origin easting/northing, street heading in degrees, streets, street length m,
#           queries). Towns are > 1 km apart. The training town has many queries per place
# (2500 for 700 db images): a backbone trained from scratch learns far less from 350 (demo test
# recall@1 0.26 with 350 queries against 0.35 with 3000, same 3-minute recipe). The 300
# validation queries make the best-epoch choice by val recall@5 less of a coin toss.
SPLITS = {
    "train": dict(origin=(540_000.0, 4_480_000.0), heading=15.0, streets=5, length_m=420.0,
                  queries=2500),
    "val": dict(origin=(546_000.0, 4_480_000.0), heading=-30.0, streets=2, length_m=300.0,
                queries=300),
    "test": dict(origin=(540_000.0, 4_486_000.0), heading=60.0, streets=3, length_m=300.0,
                 queries=150),
}
STREET_SPACING_M = 150.0

ILLUMINATIONS = ("day", "dusk", "night")
ILLUMINATION_P = (0.4, 0.25, 0.35)
SEASONS = ("summer", "autumn", "winter")
SEASON_P = (0.35, 0.3, 0.35)
OCCLUSION_P = 0.4

WALL_PALETTE = np.array([
    (150, 70, 55), (175, 95, 70), (200, 180, 150), (215, 205, 185), (160, 160, 155),
    (120, 120, 125), (225, 215, 170), (110, 80, 60), (180, 190, 195), (140, 160, 140),
    (200, 150, 110), (90, 95, 110)], np.float32) / 255
ACCENT_PALETTE = np.array([
    (200, 30, 30), (30, 90, 200), (30, 150, 60), (230, 180, 20), (240, 240, 235),
    (20, 20, 25), (150, 40, 150), (240, 120, 20), (20, 160, 170)], np.float32) / 255

# facade labels
SKY, WALL, GLASS, LEDGE, DOOR, SIGN, AWNING, ROOF = range(8)


# ----------------------------------------------------------------------------- noise
def _smooth_noise(rng, shape, cell):
    """Smooth value noise in [-1, 1] of `shape` (H, W) with feature size `cell` pixels."""
    from PIL import Image
    h, w = shape
    small = rng.uniform(-1, 1, (max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.float32)
    img = Image.fromarray(small, mode="F").resize((w + 2 * cell, h + 2 * cell), Image.BICUBIC)
    return np.clip(np.asarray(img)[cell:cell + h, cell:cell + w], -1, 1)


def _blur(rgb, radius):
    """Gaussian blur of a float RGB image in [0, 1] (via PIL, uint8 precision)."""
    from PIL import Image, ImageFilter
    img = Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(img, np.float32) / 255


# -------------------------------------------------------------------------- facades
class _Facade:
    """Facade texture of one street: albedo, labels and window ids on a (z, s) grid."""

    def __init__(self, rng, length_m, start_m=-30.0):
        self.start_m = start_m
        w = int((length_m - start_m + 90.0) * PX_PER_M)
        h = int(FACADE_HEIGHT_M * PX_PER_M)
        self.albedo = np.zeros((h, w, 3), np.float32)
        self.label = np.zeros((h, w), np.uint8)
        self.win = np.zeros((h, w), np.int32)
        self.n_win = 0
        x = 0
        while x < w - 8 * PX_PER_M:
            bw = int(rng.uniform(7, 20) * PX_PER_M)
            self._building(rng, x, min(bw, w - x - 2))
            x += bw
            if rng.random() < 0.3:
                x += int(rng.uniform(1, 4) * PX_PER_M)  # alley: sky shows through
        grime = _smooth_noise(rng, (h, w), 24)[..., None]
        self.albedo *= 1 + 0.10 * grime
        np.clip(self.albedo, 0, 1, out=self.albedo)
        self.albedo = _blur(self.albedo, 0.6)  # pre-filter against aliasing

    def _building(self, rng, x0, bw):
        p = PX_PER_M
        bh = int(rng.uniform(7, 24) * p)
        roof = rng.choice(["flat", "flat", "gable", "step"])
        base = WALL_PALETTE[rng.integers(len(WALL_PALETTE))] * rng.uniform(0.85, 1.1, 3)
        zz, xx = np.mgrid[0:bh, 0:bw]
        wall = np.empty((bh, bw, 3), np.float32)
        wall[:] = base
        kind = rng.integers(5)
        if kind == 1:  # brick: staggered courses
            row = zz // 4
            mortar = (zz % 4 == 0) | (((xx + 4 * (row % 2)) % 9) == 0)
            wall[mortar] *= 1.25
        elif kind == 2:  # siding
            wall[(zz % 3) == 0] *= 0.8
        elif kind == 3:  # vertical panels
            step = int(rng.integers(10, 18))
            wall[(xx % step) < 1] *= 0.7
        elif kind == 4:  # stone blocks
            wall[((zz % 6) == 0) | (((xx + 5 * ((zz // 6) % 2)) % 10) == 0)] *= 0.75
        mask = np.ones((bh, bw), bool)
        if roof == "gable":
            peak = int(rng.uniform(2, 4.5) * p)
            top = bh - np.abs(xx[0] - bw / 2) / (bw / 2) * peak
            mask = zz < top[None, :]
        elif roof == "step":
            cut = int(bw * rng.uniform(0.3, 0.7))
            drop = int(rng.uniform(2, 5) * p)
            side = rng.random() < 0.5
            cols = slice(0, cut) if side else slice(cut, bw)
            mask[bh - drop:, cols] = False
        sl = (slice(0, bh), slice(x0, x0 + bw))
        self.albedo[sl][mask] = wall[mask]
        self.label[sl][mask] = WALL
        # cornice / roof edge: the top rows of the mask
        edge = mask & ~np.roll(mask, -int(0.4 * p), axis=0)
        edge[-int(0.4 * p):] = mask[-int(0.4 * p):]
        cornice = base * rng.uniform(0.5, 1.3)
        self.albedo[sl][edge] = np.clip(cornice, 0, 1)
        self.label[sl][edge] = ROOF
        self._ground_floor(rng, x0, bw, base)
        self._windows(rng, x0, bw, bh, mask)
        if rng.random() < 0.35:  # drain pipe
            px = x0 + (1 if rng.random() < 0.5 else bw - 3)
            self.albedo[:bh, px:px + 2] = (0.3, 0.3, 0.32)
            self.label[:bh, px:px + 2] = LEDGE

    def _ground_floor(self, rng, x0, bw, base):
        p = PX_PER_M
        self.gf = g = int(rng.uniform(3.5, 4.5) * p)
        if rng.random() < 0.55:  # shop: display windows, sign band, maybe awning
            sign_col = ACCENT_PALETTE[rng.integers(len(ACCENT_PALETTE))]
            text_col = ACCENT_PALETTE[rng.integers(len(ACCENT_PALETTE))]
            s0 = x0 + int(rng.uniform(0.05, 0.25) * bw)
            s1 = x0 + bw - int(rng.uniform(0.05, 0.25) * bw)
            z0, z1 = g - int(1.0 * p), g - 2
            self._rect(s0, s1, z0, z1, sign_col, SIGN)
            x = s0 + 3
            while x < s1 - 4:  # "letters": blocks of random width and height
                lw = int(rng.integers(2, 6))
                lh0, lh1 = z0 + int(rng.integers(1, 3)), z1 - int(rng.integers(1, 3))
                if rng.random() < 0.8:
                    self._rect(x, min(x + lw, s1 - 2), lh0, lh1, text_col, SIGN)
                x += lw + int(rng.integers(1, 4))
            self._display_windows(rng, x0, bw, z0 - 3)
            if rng.random() < 0.4:
                a0 = z0 - int(0.9 * p)
                col = ACCENT_PALETTE[rng.integers(len(ACCENT_PALETTE))]
                seg = self.albedo[a0:z0 - 1, s0:s1]
                stripes = ((np.arange(s1 - s0) // 5) % 2).astype(bool)
                seg[:] = col
                seg[:, stripes] = (0.95, 0.95, 0.92)
                self.label[a0:z0 - 1, s0:s1] = AWNING
        else:  # residential / garage: doors and small windows
            n_doors = int(rng.integers(1, 3))
            door_col = np.array((0.35, 0.22, 0.12)) * rng.uniform(0.6, 1.6)
            for _ in range(n_doors):
                dw = int(rng.uniform(1.0, 2.8) * p)
                dx = x0 + int(rng.uniform(0.05, 0.9) * max(1, bw - dw))
                dh = int(rng.uniform(2.2, 2.8) * p)
                self._rect(dx - 2, dx + dw + 2, 0, dh + 2, base * 0.6, LEDGE)
                self._rect(dx, dx + dw, 0, dh, np.clip(door_col, 0, 1), DOOR)
            self._display_windows(rng, x0, bw, int(2.4 * p), small=True)

    def _display_windows(self, rng, x0, bw, top, small=False):
        p = PX_PER_M
        ww = int(rng.uniform(1.0, 1.6) * p) if small else int(rng.uniform(2.0, 4.0) * p)
        gap = int(rng.uniform(0.8, 2.0) * p)
        z0 = int(1.0 * p) if small else int(0.4 * p)
        x = x0 + gap
        while x + ww < x0 + bw - gap // 2:
            if (self.label[z0:top, x:x + ww] == DOOR).any() or (self.label[z0:top, x:x + ww] == LEDGE).any():
                x += ww + gap
                continue
            self._rect(x - 1, x + ww + 1, z0 - 1, top + 1, (0.15, 0.15, 0.15), LEDGE)
            self._window_pane(x, x + ww, z0, top)
            x += ww + gap

    def _windows(self, rng, x0, bw, bh, mask):
        p = PX_PER_M
        fh = rng.uniform(2.8, 3.6) * p
        spacing = rng.uniform(1.8, 4.0) * p
        ww = max(4, int(spacing * rng.uniform(0.35, 0.7)))
        wh = max(6, int(fh * rng.uniform(0.4, 0.7)))
        shape = rng.choice(["rect", "rect", "arch", "round", "split", "tall"])
        if shape == "tall":
            wh = max(wh, int(fh * 0.8))
        elif shape == "round":
            wh = ww = max(5, min(ww, wh))
        frame = ACCENT_PALETTE[rng.integers(len(ACCENT_PALETTE))] if rng.random() < 0.4 else \
            np.array((0.92, 0.92, 0.9)) * rng.uniform(0.3, 1.0)
        shutters = rng.random() < 0.25
        shutter_col = ACCENT_PALETTE[rng.integers(len(ACCENT_PALETTE))] * 0.8
        sill = rng.random() < 0.6
        n_cols = max(1, int((bw - 0.6 * p) // spacing))
        margin = (bw - n_cols * spacing) / 2
        zz, xx = np.mgrid[0:wh, 0:ww]
        if shape == "arch":
            r = ww / 2
            pane = (zz < wh - r) | ((xx + 0.5 - r) ** 2 + (zz + 0.5 - (wh - r)) ** 2 < r * r)
        elif shape == "round":
            pane = (xx + 0.5 - ww / 2) ** 2 + (zz + 0.5 - wh / 2) ** 2 < (ww / 2) ** 2
        else:
            pane = np.ones((wh, ww), bool)
        mullion = shape == "split"
        skip = rng.random(n_cols) < 0.1  # a few blind columns make the grid irregular
        floor = 0
        z = self.gf + int(0.6 * p)
        while z + wh < bh - int(0.8 * p):
            for c in range(n_cols):
                if skip[c]:
                    continue
                x = int(x0 + margin + c * spacing + (spacing - ww) / 2)
                if not mask[z + wh - 1, x - x0:x - x0 + ww].all():
                    continue
                self._rect(x - 1, x + ww + 1, z - 1, z + wh + 1, frame, LEDGE, pane=pane, pad=1)
                self._window_pane(x, x + ww, z, z + wh, pane=pane, mullion=mullion)
                if sill:
                    self._rect(x - 2, x + ww + 2, z - 3, z - 1, frame * 0.9, LEDGE)
                if shutters:
                    sw = max(2, ww // 2)
                    self._rect(x - 1 - sw, x - 1, z, z + wh, shutter_col, LEDGE)
                    self._rect(x + ww + 1, x + ww + 1 + sw, z, z + wh, shutter_col, LEDGE)
            z += int(fh)
            floor += 1

    def _window_pane(self, s0, s1, z0, z1, pane=None, mullion=False):
        self.n_win += 1
        h, w = z1 - z0, s1 - s0
        grad = np.linspace(0.20, 0.32, h)[:, None, None] * np.array((0.8, 0.9, 1.1))
        glass = np.broadcast_to(grad, (h, w, 3)).astype(np.float32).copy()
        glass[:, : max(1, w // 4)] *= 1.25  # reflection
        m = np.ones((h, w), bool) if pane is None else pane
        sl = (slice(z0, z1), slice(s0, s1))
        self.albedo[sl][m] = glass[m]
        self.label[sl][m] = GLASS
        self.win[sl][m] = self.n_win
        if mullion or (pane is None and w > 14):
            cx = s0 + w // 2
            self.albedo[z0:z1, cx:cx + 1] = (0.85, 0.85, 0.82)
            self.label[z0:z1, cx:cx + 1] = LEDGE
            if h > 12:
                cz = z0 + h * 2 // 3
                self.albedo[cz:cz + 1, s0:s1] = (0.85, 0.85, 0.82)
                self.label[cz:cz + 1, s0:s1] = LEDGE

    def _rect(self, s0, s1, z0, z1, colour, label, pane=None, pad=0):
        s0, z0 = max(s0, 0), max(z0, 0)
        if s1 <= s0 or z1 <= z0:
            return
        if pane is None:
            self.albedo[z0:z1, s0:s1] = colour
            self.label[z0:z1, s0:s1] = label
            return
        m = np.pad(pane, pad)
        if pad:  # dilate the pane mask by `pad` pixels to draw a frame around it
            m = m | np.roll(m, 1, 0) | np.roll(m, -1, 0) | np.roll(m, 1, 1) | np.roll(m, -1, 1)
        region = self.label[z0:z1, s0:s1]
        m = m[: region.shape[0], : region.shape[1]]
        self.albedo[z0:z0 + m.shape[0], s0:s0 + m.shape[1]][m] = colour
        self.label[z0:z0 + m.shape[0], s0:s0 + m.shape[1]][m] = label


class _Street:
    """One street: facade texture plus kerb-side trees and lamp posts (deterministic)."""

    def __init__(self, rng, length_m):
        self.length_m = length_m
        self.facade = _Facade(rng, length_m)
        props = []
        s = -30.0
        while s < length_m + 80:
            s += rng.uniform(6, 16)
            r = rng.random()
            if r < 0.6:
                props.append(("tree", s, rng.uniform(1.8, 3.2), rng.uniform(1.3, 2.3),
                              rng.uniform(0.7, 1.2)))
            elif r < 0.85:
                props.append(("lamp", s, rng.uniform(4.5, 6.0), 0.0, 0.0))
        self.props = props
        self.crown_noise = _smooth_noise(rng, (64, 64), 4)


# ------------------------------------------------------------------------- rendering
def _rays(h, w, focal, yaw, pitch, roll):
    """Unit-free ray directions (H, W, 3) in the street frame (x along, y to facade, z up)."""
    u = (np.arange(w) + 0.5 - w / 2) / focal
    v = (np.arange(h) + 0.5 - h / 2) / focal
    right = np.array([np.cos(yaw), -np.sin(yaw), 0.0])
    fwd = np.array([np.sin(yaw), np.cos(yaw), 0.0])
    up = np.array([0.0, 0.0, 1.0])
    fwd, up = fwd * np.cos(pitch) + up * np.sin(pitch), up * np.cos(pitch) - fwd * np.sin(pitch)
    right, up = right * np.cos(roll) + up * np.sin(roll), up * np.cos(roll) - right * np.sin(roll)
    return fwd + u[None, :, None] * right + (-v)[:, None, None] * up


def _sample_facade(facade, s, z):
    """Bilinear albedo + nearest label/window id at metric facade coordinates."""
    hf, wf = facade.label.shape
    fx = (s - facade.start_m) * PX_PER_M - 0.5
    fz = z * PX_PER_M - 0.5
    inside = (fx >= 0) & (fx < wf - 1) & (fz >= 0) & (fz < hf - 1)
    fx = np.clip(fx, 0, wf - 1.001)
    fz = np.clip(fz, 0, hf - 1.001)
    x0, z0 = fx.astype(np.int64), fz.astype(np.int64)
    ax, az = (fx - x0)[..., None], (fz - z0)[..., None]
    a = facade.albedo
    col = ((a[z0, x0] * (1 - ax) + a[z0, x0 + 1] * ax) * (1 - az)
           + (a[z0 + 1, x0] * (1 - ax) + a[z0 + 1, x0 + 1] * ax) * az)
    zi, xi = np.rint(fz).astype(np.int64), np.rint(fx).astype(np.int64)
    label = np.where(inside, facade.label[zi, xi], SKY)
    return col, label, np.where(inside, facade.win[zi, xi], 0)


def _hash01(ids, salt):
    """Deterministic pseudo-random numbers in [0, 1) per integer id."""
    x = (np.asarray(ids, np.uint64) * np.uint64(2654435761) + np.uint64(salt)) % np.uint64(2 ** 32)
    x ^= x >> np.uint64(13)
    x = (x * np.uint64(1274126177)) % np.uint64(2 ** 32)
    return (x % np.uint64(10007)).astype(np.float64) / 10007.0


def render_view(street, cam, cond, rng, image_size):
    """Render one RGB uint8 image (H, W, 3) of `street` from camera `cam` under `cond`."""
    h, w = image_size
    d = _rays(h, w, cam["focal"], cam["yaw"], cam["pitch"], cam["roll"])
    dx, dy, dz = d[..., 0], np.maximum(d[..., 1], 1e-6), d[..., 2]
    depth = FACADE_DIST_M - cam["y"]
    t_f = depth / dy
    s_f, z_f = cam["x"] + t_f * dx, cam["h"] + t_f * dz
    col, label, win = _sample_facade(street.facade, s_f, z_f)
    img = col
    season, illum = cond["season"], cond["illumination"]

    # ground (below the facade base): road, kerb, sidewalk
    ground = z_f < 0
    t_g = cam["h"] / np.maximum(-dz, 1e-6)
    gx, gy = cam["x"] + t_g * dx, cam["y"] + t_g * dy
    on_walk = gy > FACADE_DIST_M - SIDEWALK_M
    g_col = np.where(on_walk[..., None], np.array((0.58, 0.57, 0.55)), np.array((0.27, 0.27, 0.29)))
    tiles = on_walk & ((np.abs(gx - np.round(gx)) < 0.04) | (np.abs(gy - np.round(gy)) < 0.04))
    g_col = np.where(tiles[..., None], g_col * 0.8, g_col)
    kerb = np.abs(gy - (FACADE_DIST_M - SIDEWALK_M)) < 0.12
    g_col = np.where(kerb[..., None], np.array((0.75, 0.75, 0.72)), g_col)
    lane = (np.abs(gy - (FACADE_DIST_M - SIDEWALK_M - 5.5)) < 0.08) & ((gx % 6) < 3)
    g_col = np.where(lane[..., None], np.array((0.85, 0.85, 0.8)), g_col)
    if season == "winter":
        g_col = np.where(on_walk[..., None] | (rng.random() < 0.6), np.array((0.9, 0.92, 0.95)),
                         g_col * 0.8 + 0.25)
    elif season == "autumn":
        leaves = _hash01(np.floor(gx * 4).astype(np.int64) * 7919 + np.floor(gy * 4).astype(np.int64),
                         cond["salt"]) < 0.35
        g_col = np.where((leaves & on_walk)[..., None], np.array((0.7, 0.35, 0.1)), g_col)
    img = np.where(ground[..., None], g_col, img)
    label = np.where(ground, WALL, label)

    # sky
    sky = (label == SKY) & ~ground
    elev = np.clip(dz / np.sqrt(dx ** 2 + dy ** 2 + dz ** 2), 0, 1)[..., None]
    sky_col = _sky_colour(elev, illum, season, rng, h, w)
    img = np.where(sky[..., None], sky_col, img)

    # kerb-side billboards, far to near
    emissive = np.zeros((h, w), bool)
    for layer, depth_m in (("ped", PED_DEPTH_M), ("props", TREE_DEPTH_M), ("cars", CAR_DEPTH_M)):
        t_l = (FACADE_DIST_M - depth_m - cam["y"]) / dy
        s_l, z_l = cam["x"] + t_l * dx, cam["h"] + t_l * dz
        if layer == "props":
            img, lamp = _draw_props(street, s_l, z_l, img, season)
            emissive |= lamp
        else:
            img = _draw_occluders(cond.get(layer, ()), s_l, z_l, img)
    if season == "winter":  # snow on ledges, cornices and roofs
        img = np.where(((label == LEDGE) | (label == ROOF))[..., None] & ~ground[..., None],
                       img * 0.3 + 0.68, img)

    img = _light(img, label, win, emissive, cond, rng)
    img = img + rng.normal(0, cond["noise"], img.shape)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def _sky_colour(elev, illum, season, rng, h, w):
    if illum == "night":
        top, horizon = np.array((0.01, 0.01, 0.05)), np.array((0.08, 0.07, 0.12))
    elif illum == "dusk":
        top, horizon = np.array((0.25, 0.2, 0.45)), np.array((0.95, 0.55, 0.3))
    elif season == "winter":
        top, horizon = np.array((0.7, 0.72, 0.75)), np.array((0.85, 0.86, 0.88))
    else:
        top, horizon = np.array((0.3, 0.5, 0.85)), np.array((0.75, 0.85, 0.95))
    t = np.sqrt(elev)
    col = horizon * (1 - t) + top * t
    if illum != "night":
        clouds = np.clip(_smooth_noise(rng, (h, w), int(rng.integers(12, 30))), 0, 1)[..., None]
        col = col * (1 - 0.6 * clouds) + 0.92 * 0.6 * clouds * (0.8 if illum == "dusk" else 1.0)
    return col


def _draw_props(street, s, z, img, season):
    lamp_px = np.zeros(img.shape[:2], bool)
    s_min, s_max = float(s.min()), float(s.max())
    crown_col = {"summer": (0.2, 0.45, 0.15), "autumn": (0.8, 0.4, 0.08),
                 "winter": (0.3, 0.22, 0.15)}[season]
    for kind, s0, hgt, rad, tone in street.props:
        if s0 < s_min - 3 or s0 > s_max + 3:
            continue
        ds = s - s0
        if kind == "tree":
            trunk = (np.abs(ds) < 0.18) & (z >= 0) & (z < hgt + rad)
            e = (ds / rad) ** 2 + ((z - hgt - rad * 0.9) / (rad * 1.1)) ** 2
            n = street.crown_noise[(np.floor(z * 4) % 64).astype(int), (np.floor(ds * 4 + s0 * 7) % 64).astype(int)]
            if season == "winter":  # bare branches: a sparse dark lattice
                crown = (e < 1) & (np.abs(n) < 0.12)
            else:
                crown = (e < 1 - 0.25 * n)
            img = np.where(trunk[..., None], np.array((0.25, 0.18, 0.12)), img)
            shade = (np.array(crown_col) * tone * (1 + 0.35 * n)[..., None])
            img = np.where(crown[..., None], shade, img)
        else:
            pole = (np.abs(ds) < 0.08) & (z >= 0) & (z < hgt)
            arm = (ds > 0) & (ds < 0.8) & (np.abs(z - hgt) < 0.06)
            head = (np.abs(ds - 0.8) < 0.25) & (z < hgt) & (z > hgt - 0.25)
            img = np.where((pole | arm)[..., None], np.array((0.2, 0.22, 0.22)), img)
            img = np.where(head[..., None], np.array((0.85, 0.85, 0.7)), img)
            lamp_px |= head
    return img, lamp_px


def _draw_occluders(objects, s, z, img):
    for kind, s0, length, colour in objects:
        ds = s - s0
        if kind == "ped":
            body = (np.abs(ds) < 0.28) & (z > 0) & (z < 1.45)
            head = ds ** 2 + (z - 1.6) ** 2 < 0.14 ** 2
            img = np.where(body[..., None], np.array(colour), img)
            img = np.where(head[..., None], np.array((0.8, 0.65, 0.5)), img)
        else:
            tall = kind == "van"
            body = (np.abs(ds) < length / 2) & (z > 0.35) & (z < (2.2 if tall else 1.1))
            cabin = (np.abs(ds + (0 if tall else 0.2)) < length * 0.28) & (z >= 1.1) & (z < 1.6) & ~tall
            wind = cabin & (np.abs(ds + 0.2) < length * 0.25) & (z > 1.15)
            wheels = ((np.abs(ds) - length * 0.32) ** 2 + (z - 0.33) ** 2) < 0.33 ** 2
            img = np.where((body | cabin)[..., None], np.array(colour), img)
            img = np.where(wind[..., None], np.array((0.2, 0.25, 0.3)), img)
            img = np.where(wheels[..., None], np.array((0.05, 0.05, 0.05)), img)
    return img


def _light(img, label, win, emissive, cond, rng):
    illum = cond["illumination"]
    gain = cond["exposure"] * np.asarray(cond["white_balance"])
    if illum == "day":
        return img * gain
    sky = label == SKY
    if illum == "dusk":
        lit_p, lit_gain, ambient, cast = 0.2, 0.6, 0.45, np.array((1.15, 0.8, 0.65))
    else:
        lit_p, lit_gain, ambient, cast = 0.45, 0.95, 0.22, np.array((0.6, 0.75, 1.2))
    out = np.where(sky[..., None], img, img * ambient * cast * gain)
    lit = (label == GLASS) & (_hash01(win, cond["salt"]) < lit_p)
    warm = np.array((1.0, 0.82, 0.5)) * lit_gain * (0.7 + 0.3 * _hash01(win, cond["salt"] + 1))[..., None]
    out = np.where(lit[..., None], warm, out)
    sign = label == SIGN
    out = np.where(sign[..., None], img * (0.9 if illum == "night" else 0.7), out)
    out = np.where(emissive[..., None], np.array((1.0, 0.95, 0.75)), out)
    if emissive.any():  # lamp halo
        from PIL import Image, ImageFilter
        glow = Image.fromarray((emissive * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(4))
        out = out + (np.asarray(glow, np.float32) / 255 * 1.5)[..., None] * np.array((0.6, 0.5, 0.3))
    return out


# -------------------------------------------------------------------------- cameras
def _db_camera(x, image_size):
    return dict(x=x, y=0.0, h=1.8, yaw=np.radians(20.0), pitch=np.radians(12.0), roll=0.0,
                focal=0.8 * image_size[1])


def _query_camera(rng, length_m, image_size):
    return dict(x=rng.uniform(10, length_m - 10), y=rng.uniform(-3.0, 3.5),
                h=rng.uniform(1.3, 2.3), yaw=np.radians(20 + rng.uniform(-15, 15)),
                pitch=np.radians(12 + rng.uniform(-5, 5)), roll=np.radians(rng.uniform(-4, 4)),
                focal=0.8 * image_size[1] * rng.uniform(0.85, 1.25))


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


def _query_condition(rng, salt):
    illum = ILLUMINATIONS[rng.choice(3, p=ILLUMINATION_P)]
    season = SEASONS[rng.choice(3, p=SEASON_P)]
    occluded = rng.random() < OCCLUSION_P
    return dict(illumination=illum, season=season, occluded=occluded, salt=salt,
                exposure=rng.uniform(0.8, 1.2), white_balance=rng.uniform(0.9, 1.1, 3),
                noise=0.02 if illum == "night" else 0.006)


def condition_string(cond):
    """`"<illumination>;<season>[;occluded]"`, the `conditions` column of the query CSV."""
    return ";".join([cond["illumination"], cond["season"]] + (["occluded"] if cond["occluded"] else []))


# -------------------------------------------------------------------------- dataset
def _street_frame(spec, k):
    th = np.radians(spec["heading"])
    along = np.array([np.cos(th), np.sin(th)])
    across = np.array([-np.sin(th), np.cos(th)])
    start = np.asarray(spec["origin"]) + k * STREET_SPACING_M * across
    return start, along, across


def _utm_filename(idx, east, north, kind):
    return f"@{east:.2f}@{north:.2f}@18@T@@@{kind}{idx:05d}@@@@@@@@.jpg"


def _generate_split(split_name, split_idx, spec, seed, image_size, db_spacing_m, out_root,
                    jpeg_quality, progress):
    from PIL import Image
    streets = [_Street(np.random.default_rng([seed, split_idx, 1000 + k]), spec["length_m"])
               for k in range(spec["streets"])]
    frames = [_street_frame(spec, k) for k in range(spec["streets"])]
    jobs = []
    n_per = int(spec["length_m"] // db_spacing_m)
    for k in range(spec["streets"]):
        for j in range(n_per):
            jobs.append(("db", k, (j + 0.5) * db_spacing_m))
    q_rng = np.random.default_rng([seed, split_idx, 2])
    q_street = q_rng.integers(spec["streets"], size=spec["queries"])
    jobs += [("query", int(k), None) for k in q_street]
    rel = {"db": [], "query": []}
    utm = {"db": [], "query": []}
    conds = []
    for role in ("db", "query"):
        (out_root / "images" / split_name / ("database" if role == "db" else "queries")).mkdir(
            parents=True, exist_ok=True)
    for job_idx, (role, k, x) in enumerate(progress(jobs, desc=f"demo {split_name}")):
        i = len(rel[role])
        rng = np.random.default_rng([seed, split_idx, 3 if role == "db" else 4, i])
        if role == "db":
            cam = _db_camera(x, image_size)
            cam["y"] = rng.uniform(-0.4, 0.4)
            cond = dict(illumination="day", season="summer", occluded=False, salt=0,
                        exposure=rng.uniform(0.9, 1.1), white_balance=rng.uniform(0.96, 1.04, 3),
                        noise=0.004)
            cars, peds = _occluders(rng, cam, int(rng.random() < 0.25), 0)
        else:
            cam = _query_camera(rng, spec["length_m"], image_size)
            cond = _query_condition(rng, salt=int(rng.integers(2 ** 30)))
            if cond["occluded"]:
                cars, peds = _occluders(rng, cam, int(rng.integers(1, 4)), int(rng.integers(0, 4)))
            else:
                cars, peds = _occluders(rng, cam, int(rng.random() < 0.2), 0)
            conds.append(condition_string(cond))
        cond["cars"], cond["ped"] = cars, peds
        pixels = render_view(streets[k], cam, cond, rng, image_size)
        start, along, across = frames[k]
        east, north = start + cam["x"] * along + cam["y"] * across
        sub = "database" if role == "db" else "queries"
        name = _utm_filename(i, east, north, "d" if role == "db" else "q")
        path = f"images/{split_name}/{sub}/{name}"
        Image.fromarray(pixels).save(out_root / path, quality=jpeg_quality)
        rel[role].append(path)
        utm[role].append((east, north))
    return places.PlaceSplit(
        name=f"demo_{split_name}", db_paths=rel["db"], db_utm=np.array(utm["db"]),
        query_paths=rel["query"], query_utm=np.array(utm["query"]).reshape(-1, 2),
        query_conditions=conds, pos_dist_thr=25.0, non_triv_pos_dist_sq_thr=100.0,
        root=str(out_root))


def _scaled_specs(scale):
    specs = {}
    for name, spec in SPLITS.items():
        s = dict(spec)
        s["length_m"] = max(30.0, round(spec["length_m"] * scale / 3) * 3)
        s["queries"] = max(5, int(round(spec["queries"] * scale)))
        specs[name] = s
    return specs


def _params(seed, image_size, scale, db_spacing_m, jpeg_quality):
    return {"generator": "tf_netvlad.demo_data", "version": DEMO_VERSION, "seed": int(seed),
            "image_size": [int(v) for v in image_size], "scale": float(scale),
            "db_spacing_m": float(db_spacing_m), "jpeg_quality": int(jpeg_quality)}


def _result_paths(out_dir):
    out = {"root": out_dir, "manifest": out_dir / "manifest.json", "readme": out_dir / "README.txt"}
    for name in SPLITS:
        out[f"{name}_mat"] = out_dir / f"demo_{name}.mat"
        out[f"{name}_csv"] = out_dir / f"demo_{name}.csv"
    return out


def _count_files(root):
    return sum(len(files) for _, _, files in os.walk(root))


def _is_complete(out_dir, params):
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if {k: manifest.get(k) for k in params} != params:
        return False
    return _count_files(out_dir) == manifest.get("file_count")


def _looks_like_ours(out_dir):
    ours = {"images", "manifest.json", "README.txt"} | {f"demo_{n}.{e}" for n in SPLITS for e in ("mat", "csv")}
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


def generate_demo_data(out_dir, seed=0, image_size=(96, 128), scale=1.0, db_spacing_m=3.0,
                       jpeg_quality=75, progress=True):
    """Generate the demo dataset into `out_dir` (a no-op when it is already complete).

    Args:
        out_dir: output directory; created atomically (generated in a sibling temp directory,
            then renamed), so an interrupted run never leaves a dataset that looks complete.
        seed: random seed; the same seed gives byte-identical files.
        image_size: (H, W) of the JPEG images.
        scale: multiplies street lengths and query counts (e.g. 0.1 for tests).
        db_spacing_m: distance between consecutive database images along a street.
        jpeg_quality: JPEG quality of the images.
        progress: show tqdm progress bars.

    Returns:
        dict of paths: `root`, `manifest`, `readme` and `<split>_mat` / `<split>_csv` for the
        splits `train`, `val`, `test` (load them with `tf_netvlad.places.load_split`).
    """
    image_size = tuple(int(v) for v in image_size)
    if len(image_size) != 2 or min(image_size) < 16:
        raise ValueError(f"`image_size` must be (H, W) with both >= 16, received {image_size}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, received {seed!r}.")
    if not scale > 0:
        raise ValueError(f"`scale` must be > 0, received {scale!r}.")
    if not db_spacing_m > 0:
        raise ValueError(f"`db_spacing_m` must be > 0, received {db_spacing_m!r}.")
    out_dir = Path(out_dir).absolute()
    params = _params(seed, image_size, scale, db_spacing_m, jpeg_quality)
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
        _write_dataset(tmp, params, image_size, scale, db_spacing_m, jpeg_quality, progress)
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


def _write_dataset(root, params, image_size, scale, db_spacing_m, jpeg_quality, progress):
    if progress:
        from tqdm.auto import tqdm

        def bar(it, desc):
            return tqdm(it, desc=desc, unit="img", leave=False, mininterval=1.0)
    else:
        def bar(it, desc):
            return it
    root.mkdir(parents=True)
    specs = _scaled_specs(scale)
    splits = {}
    for idx, (name, spec) in enumerate(specs.items()):
        split = _generate_split(name, idx, spec, params["seed"], image_size, db_spacing_m, root,
                                jpeg_quality, bar)
        places.write_mat(split, root / f"demo_{name}.mat", which_set=name)
        places.write_csv(split, root / f"demo_{name}.csv")
        splits[name] = split
    (root / "README.txt").write_text(_readme(splits, specs, params))
    manifest = dict(params)
    manifest["splits"] = {n: {"db": s.num_db, "queries": s.num_queries} for n, s in splits.items()}
    manifest["file_count"] = _count_files(root) + 1
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _readme(splits, specs, params):
    lines = [
        "tf_netvlad demo place-recognition dataset",
        "=========================================",
        "",
        f"Generated by tf_netvlad.demo_data (version {params['version']}, seed {params['seed']}, "
        f"image size {params['image_size'][0]}x{params['image_size'][1]} (HxW), scale "
        f"{params['scale']}). Regenerate with: tf_netvlad demo-data --out DIR --seed "
        f"{params['seed']}",
        "",
        "Synthetic streets: each split is a town of parallel streets (150 m apart) lined with",
        "procedural buildings (window grids, shop signs, awnings, doors, cornices, gables), trees",
        "and lamp posts. The towns are > 1 km apart and have different buildings.",
        "",
        f"Database: summer day, one image every {params['db_spacing_m']:g} m, fixed camera",
        "(20 deg yaw towards the facade, 12 deg pitch), occasional parked car.",
        "Queries: random position on the street, lateral offset -3..+3.5 m, height 1.3-2.3 m,",
        "yaw +-15 deg, pitch +-5 deg, roll +-4 deg, zoom 0.85-1.25, and random conditions:",
        "  illumination day / dusk (warm cast, some lit windows) / night (dark, lit windows,",
        "  lit signs and street lamps), season summer / autumn (orange foliage, leaves) / winter",
        "  (bare trees, snow on ground and ledges, overcast sky), occluded (cars, vans,",
        "  pedestrians in front of the facade).",
        "",
        "Files (paths in the split files are relative to this directory):",
    ]
    for name, split in splits.items():
        lines.append(f"  demo_{name}.mat / demo_{name}.csv: {split.num_db} db, {split.num_queries} "
                     f"queries, {specs[name]['streets']} streets x {specs[name]['length_m']:g} m")
    lines += [
        "  images/<split>/database|queries/@easting@northing@18@T@@@<id>@@@@@@@@.jpg",
        "",
        "The .mat files are NetVLAD dbStruct files (posDistThr 25 m, nonTrivPosDistSqThr 100 m^2).",
        "The CSV manifests have columns path, role (db|query), easting, northing, conditions;",
        "conditions is '<day|dusk|night>;<summer|autumn|winter>[;occluded]' for queries.",
        "Load with tf_netvlad.places.load_split('demo_test.mat').",
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
