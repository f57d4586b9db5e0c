"""The demo town's streets: procedurally generated facades, trees and lamp posts.

A `Street` is one straight street: a `Facade` texture (albedo, semantic label and window id per
10 cm facade pixel: walls, window grids of different spacing and shape, shop signs, awnings,
doors, cornices, gables) and the kerb-side props in front of it. Everything is a deterministic
function of the NumPy generator it is built from. `tf_netvlad.demo.render` draws views of it;
`tf_netvlad.demo.dataset` lays out the towns and writes the dataset.
"""

import numpy as np

PX_PER_M = 10  # facade texture resolution
FACADE_HEIGHT_M = 32.0
FACADE_DIST_M = 12.0  # db camera -> facade plane
TREE_DEPTH_M = 2.5  # tree / lamp line in front of the facade
PED_DEPTH_M = 1.5  # pedestrians on the sidewalk
CAR_DEPTH_M = 4.5  # parked cars on the road
SIDEWALK_M = 3.5

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
def smooth_noise(rng, shape, cell):
    """Smooth value noise in [-1, 1] of `shape` (H, W) with feature size `cell` pixels."""
    from PIL import Image
    h, w = shape
    small = rng.uniform(-1, 1, (max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.float32)
    img = Image.fromarray(small, mode="F").resize((w + 2 * cell, h + 2 * cell), Image.BICUBIC)
    return np.clip(np.asarray(img)[cell:cell + h, cell:cell + w], -1, 1)


def blur(rgb, radius):
    """Gaussian blur of a float RGB image in [0, 1] (via PIL, uint8 precision)."""
    from PIL import Image, ImageFilter
    img = Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(img, np.float32) / 255


# -------------------------------------------------------------------------- facades
class Facade:
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
        grime = smooth_noise(rng, (h, w), 24)[..., None]
        self.albedo *= 1 + 0.10 * grime
        np.clip(self.albedo, 0, 1, out=self.albedo)
        self.albedo = blur(self.albedo, 0.6)  # pre-filter against aliasing

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


class Street:
    """One street: facade texture plus kerb-side trees and lamp posts (deterministic)."""

    def __init__(self, rng, length_m):
        self.length_m = length_m
        self.facade = Facade(rng, length_m)
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
        self.crown_noise = smooth_noise(rng, (64, 64), 4)
