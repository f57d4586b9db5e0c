"""Ray-cast rendering of demo street views (NumPy + PIL).

A pinhole camera looks at a `demo_scene.Street` obliquely: each pixel's ray hits the facade
plane, the ground plane, kerb-side billboards (trees, lamps, cars, pedestrians) or the sky, so
nearby positions see overlapping facade strips with real perspective and parallax. Illumination
(day, dusk, night with lit windows and lamps), season, weather (rain, fog) and camera noise are
applied per view.
"""

import numpy as np

from tf_netvlad.demo.scene import (
    CAR_DEPTH_M,
    FACADE_DIST_M,
    GLASS,
    LEDGE,
    PED_DEPTH_M,
    PX_PER_M,
    ROOF,
    SIDEWALK_M,
    SIGN,
    SKY,
    TREE_DEPTH_M,
    WALL,
    smooth_noise,
)


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
    weather = cond.get("weather", "clear")

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
    sky_col = _sky_colour(elev, illum, season, rng, h, w, overcast=weather != "clear")
    img = np.where(sky[..., None], sky_col, img)

    # ray length to what each pixel shows (for fog): facade, ground, sky, then the billboards
    dist = None
    if weather != "clear":
        norm = np.sqrt(dx ** 2 + dy ** 2 + dz ** 2)
        dist = np.where(ground, t_g, np.where(sky, np.inf, t_f)) * norm

    # kerb-side billboards, far to near
    emissive = np.zeros((h, w), bool)
    for layer, depth_m in (("ped", PED_DEPTH_M), ("props", TREE_DEPTH_M), ("cars", CAR_DEPTH_M)):
        t_l = (FACADE_DIST_M - depth_m - cam["y"]) / dy
        s_l, z_l = cam["x"] + t_l * dx, cam["h"] + t_l * dz
        if layer == "props":
            img, lamp, cover = _draw_props(street, s_l, z_l, img, season)
            emissive |= lamp
        else:
            img, cover = _draw_occluders(cond.get(layer, ()), s_l, z_l, img)
        if dist is not None:
            dist = np.where(cover, t_l * norm, dist)
    if season == "winter":  # snow on ledges, cornices and roofs
        img = np.where(((label == LEDGE) | (label == ROOF))[..., None] & ~ground[..., None],
                       img * 0.3 + 0.68, img)

    img = _light(img, label, win, emissive, cond, rng)
    if weather == "rain":
        img = _rain(img, ground, dist, illum, rng)
    elif weather == "fog":
        img = _fog(img, dist, illum, emissive, rng, visibility_m=rng.uniform(35.0, 90.0))
    img = img + rng.normal(0, cond["noise"], img.shape)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def _sky_colour(elev, illum, season, rng, h, w, overcast=False):
    if illum == "night":
        top, horizon = np.array((0.01, 0.01, 0.05)), np.array((0.08, 0.07, 0.12))
    elif illum == "dusk":
        top, horizon = np.array((0.25, 0.2, 0.45)), np.array((0.95, 0.55, 0.3))
    elif season == "winter" or overcast:
        top, horizon = np.array((0.7, 0.72, 0.75)), np.array((0.85, 0.86, 0.88))
    else:
        top, horizon = np.array((0.3, 0.5, 0.85)), np.array((0.75, 0.85, 0.95))
    t = np.sqrt(elev)
    col = horizon * (1 - t) + top * t
    if illum != "night":
        clouds = np.clip(smooth_noise(rng, (h, w), int(rng.integers(12, 30))), 0, 1)[..., None]
        col = col * (1 - 0.6 * clouds) + 0.92 * 0.6 * clouds * (0.8 if illum == "dusk" else 1.0)
    return col


def _window(ds, z, lo, hi, z_hi):
    """Bounding box (row, column slices) of the pixels with lo < ds < hi and 0 <= z <= z_hi.

    Every mask of a billboard object lies inside its window, so drawing it there gives the same
    pixels as drawing it on the whole image, at a fraction of the cost.
    """
    band = (ds > lo) & (ds < hi) & (z >= 0) & (z <= z_hi)
    rows, cols = np.flatnonzero(band.any(axis=1)), np.flatnonzero(band.any(axis=0))
    if not rows.size:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _draw_props(street, s, z, img, season):
    """Trees and lamp posts; returns the image, the lamp-head pixels and every covered pixel."""
    img = np.array(img, np.float64)
    lamp_px = np.zeros(img.shape[:2], bool)
    cover = np.zeros(img.shape[:2], bool)
    s_min, s_max = float(s.min()), float(s.max())
    crown_col = {"summer": (0.2, 0.45, 0.15), "autumn": (0.8, 0.4, 0.08),
                 "winter": (0.3, 0.22, 0.15)}[season]
    for kind, s0, hgt, rad, tone in street.props:
        if s0 < s_min - 3 or s0 > s_max + 3:
            continue
        ds_all = s - s0
        if kind == "tree":  # crown: e < 1.25 at most, i.e. |ds| < 1.12 rad, z < hgt + 2.13 rad
            win = _window(ds_all, z, -max(1.2 * rad, 0.2), max(1.2 * rad, 0.2), hgt + 2.5 * rad)
        else:  # pole, arm and head: -0.08 < ds < 1.05, z < hgt + 0.06
            win = _window(ds_all, z, -0.1, 1.1, hgt + 0.1)
        if win is None:
            continue
        ds, zw, sub = ds_all[win], z[win], img[win]
        if kind == "tree":
            trunk = (np.abs(ds) < 0.18) & (zw >= 0) & (zw < hgt + rad)
            e = (ds / rad) ** 2 + ((zw - hgt - rad * 0.9) / (rad * 1.1)) ** 2
            n = street.crown_noise[(np.floor(zw * 4) % 64).astype(int), (np.floor(ds * 4 + s0 * 7) % 64).astype(int)]
            if season == "winter":  # bare branches: a sparse dark lattice
                crown = (e < 1) & (np.abs(n) < 0.12)
            else:
                crown = (e < 1 - 0.25 * n)
            sub = np.where(trunk[..., None], np.array((0.25, 0.18, 0.12)), sub)
            shade = (np.array(crown_col) * tone * (1 + 0.35 * n)[..., None])
            img[win] = np.where(crown[..., None], shade, sub)
            cover[win] |= trunk | crown
        else:
            pole = (np.abs(ds) < 0.08) & (zw >= 0) & (zw < hgt)
            arm = (ds > 0) & (ds < 0.8) & (np.abs(zw - hgt) < 0.06)
            head = (np.abs(ds - 0.8) < 0.25) & (zw < hgt) & (zw > hgt - 0.25)
            sub = np.where((pole | arm)[..., None], np.array((0.2, 0.22, 0.22)), sub)
            img[win] = np.where(head[..., None], np.array((0.85, 0.85, 0.7)), sub)
            lamp_px[win] |= head
            cover[win] |= pole | arm | head
    return img, lamp_px, cover


def _draw_occluders(objects, s, z, img):
    """Cars, vans and pedestrians; returns the image and every covered pixel."""
    img = np.array(img, np.float64)
    cover = np.zeros(img.shape[:2], bool)
    for kind, s0, length, colour in objects:
        ds_all = s - s0
        if kind == "ped":  # body |ds| < 0.28, head z < 1.74
            win = _window(ds_all, z, -0.3, 0.3, 1.8)
        else:  # wheels |ds| < 0.32 length + 0.33, body z < 2.2
            win = _window(ds_all, z, -(length / 2 + 0.4), length / 2 + 0.4, 2.3)
        if win is None:
            continue
        ds, zw, sub = ds_all[win], z[win], img[win]
        if kind == "ped":
            body = (np.abs(ds) < 0.28) & (zw > 0) & (zw < 1.45)
            head = ds ** 2 + (zw - 1.6) ** 2 < 0.14 ** 2
            sub = np.where(body[..., None], np.array(colour), sub)
            img[win] = np.where(head[..., None], np.array((0.8, 0.65, 0.5)), sub)
            cover[win] |= body | head
        else:
            tall = kind == "van"
            body = (np.abs(ds) < length / 2) & (zw > 0.35) & (zw < (2.2 if tall else 1.1))
            cabin = (np.abs(ds + (0 if tall else 0.2)) < length * 0.28) & (zw >= 1.1) & (zw < 1.6) & (not tall)
            wind = cabin & (np.abs(ds + 0.2) < length * 0.25) & (zw > 1.15)
            wheels = ((np.abs(ds) - length * 0.32) ** 2 + (zw - 0.33) ** 2) < 0.33 ** 2
            sub = np.where((body | cabin)[..., None], np.array(colour), sub)
            sub = np.where(wind[..., None], np.array((0.2, 0.25, 0.3)), sub)
            img[win] = np.where(wheels[..., None], np.array((0.05, 0.05, 0.05)), sub)
            cover[win] |= body | cabin | wheels
    return img, cover


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


def _haze(img, dist, colour, visibility_m):
    """Koschmieder's law: contrast falls to 5 % (exp(-3)) at `visibility_m`; the sky is `colour`."""
    t = np.exp(-3.0 * dist / visibility_m)[..., None]
    return img * t + np.asarray(colour) * (1 - t)


_FOG_COLOUR = {"day": (0.78, 0.79, 0.8), "dusk": (0.62, 0.52, 0.5), "night": (0.09, 0.09, 0.11)}


def _fog(img, dist, illum, emissive, rng, visibility_m):
    """Fog: everything fades into the fog colour with distance; lamps glow through it."""
    out = _haze(img, dist, np.array(_FOG_COLOUR[illum]) * rng.uniform(0.9, 1.1), visibility_m)
    if emissive.any():  # wide, soft halos around the lamps
        from PIL import Image, ImageFilter
        glow = Image.fromarray((emissive * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(9))
        out = out + (np.asarray(glow, np.float32) / 255 * 2.5)[..., None] * np.array((0.5, 0.45, 0.35))
    return out


def _rain(img, ground, dist, illum, rng):
    """Rain: wet (darker, glossier) ground, light haze, and slanted streaks across the view."""
    from PIL import Image, ImageDraw, ImageFilter
    h, w = img.shape[:2]
    img = np.where(ground[..., None], img * 0.55 + 0.06, img)
    img = _haze(img, dist, np.array(_FOG_COLOUR[illum]) * 0.9, rng.uniform(120.0, 250.0))
    streaks = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(streaks)
    slant = rng.uniform(-0.35, 0.35)
    for _ in range(int(h * w * rng.uniform(0.004, 0.01))):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        length = rng.uniform(0.03, 0.09) * h
        draw.line([(x, y), (x + slant * length, y + length)], fill=int(rng.integers(90, 200)), width=1)
    alpha = np.asarray(streaks.filter(ImageFilter.GaussianBlur(0.5)), np.float32)[..., None] / 255
    bright = 0.85 if illum == "day" else 0.45
    return img * (1 - 0.5 * alpha) + bright * 0.5 * alpha
