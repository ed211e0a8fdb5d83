"""Randomness keyed by global position: what makes every region of a slide render the same cells.

Counter-based random numbers (a SplitMix64 hash of ``(seed, stream, x, y)``) and the stream ids of every
independent property, smooth value noise for low-frequency fields, periodic textures (chromatin, X-gal
granules, stroma fibres) sampled at global positions, and sensor noise from tiles keyed by global pixel
coordinates. Nothing here depends on the region being rendered, only on slide positions.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtri

#: Texture pixel size (µm) and period (px) of the periodic textures.
_TEX_MPP = 0.25
_TEX_PX = 512
#: Size (px) of the global tiles of sensor noise.
_NOISE_TILE = 256
_NOISE_BANK = 1024


# ----------------------------------------------------------------------------------------------------
# counter-based random numbers
# ----------------------------------------------------------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix(z: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """SplitMix64 finaliser (wrapping uint64 arithmetic), elementwise."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _key(seed: int, stream: int) -> NDArray[np.uint64]:
    return _mix(_mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], np.uint64)) ^ np.uint64(stream))


def _uniform(
    seed: int, stream: int, ix: NDArray[np.int64], iy: NDArray[np.int64]
) -> NDArray[np.float64]:
    """Uniform numbers in (0, 1) that depend only on (seed, stream, ix, iy)."""
    ux = np.asarray(ix, np.int64).view(np.uint64)
    uy = np.asarray(iy, np.int64).view(np.uint64)
    h = _mix(_mix(_key(seed, stream) ^ ux) ^ uy)
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def _normal(
    seed: int, stream: int, ix: NDArray[np.int64], iy: NDArray[np.int64]
) -> NDArray[np.float64]:
    return ndtri(_uniform(seed, stream, ix, iy))


# streams (one per independent property); _S_SHAPE and _S_BODY_SHAPE use 6 consecutive streams each,
# _S_JITTER 3
_S_PRESENT, _S_JX, _S_JY, _S_SENESCENT, _S_PRIORITY, _S_DIAMETER, _S_ASPECT, _S_ANGLE = range(8)
_S_SHAPE = 8
_S_BODY_ANGLE, _S_BODY_ASPECT, _S_BODY_OFFSET = 14, 15, 16
_S_BODY_SHAPE = 17
_S_COUNTERSTAIN, _S_KI67, _S_KI67_LEVEL, _S_P16, _S_P16_LEVEL, _S_SABGAL, _S_SABGAL_LEVEL = range(
    24, 31
)
_S_JITTER = 31
_S_TISSUE = 100
_S_CELLULARITY = 120
_S_TEXTURE = 140
_S_NOISE = 1 << 40


# ----------------------------------------------------------------------------------------------------
# value noise
# ----------------------------------------------------------------------------------------------------
def _value_noise(
    seed: int, stream: int, x_um: NDArray[Any], y_um: NDArray[Any], cell_um: float
) -> NDArray[np.float64]:
    """Smooth value noise in [-1, 1] on a lattice of ``cell_um`` (quintic interpolation)."""
    gx, gy = x_um / cell_um, y_um / cell_um
    ix, iy = np.floor(gx), np.floor(gy)
    fx, fy = gx - ix, gy - iy
    wx = fx * fx * fx * (fx * (fx * 6.0 - 15.0) + 10.0)
    wy = fy * fy * fy * (fy * (fy * 6.0 - 15.0) + 10.0)
    ix, iy = ix.astype(np.int64), iy.astype(np.int64)
    v00 = _uniform(seed, stream, ix, iy)
    v10 = _uniform(seed, stream, ix + 1, iy)
    v01 = _uniform(seed, stream, ix, iy + 1)
    v11 = _uniform(seed, stream, ix + 1, iy + 1)
    top = v00 + (v10 - v00) * wx
    bottom = v01 + (v11 - v01) * wx
    return 2.0 * (top + (bottom - top) * wy) - 1.0


def _fbm(
    seed: int,
    stream: int,
    x_um: NDArray[Any],
    y_um: NDArray[Any],
    octaves: tuple[tuple[float, float], ...],
) -> NDArray[np.float64]:
    total = np.zeros(np.broadcast(x_um, y_um).shape)
    for k, (cell, amplitude) in enumerate(octaves):
        total += amplitude * _value_noise(seed, stream + k, x_um, y_um, cell)
    return total


def _pixel_centres_um(origin_px: int, n: int, mpp: float) -> NDArray[np.float64]:
    """Slide positions (µm) of the centres of global pixels ``origin_px .. origin_px + n - 1``."""
    return (np.arange(origin_px, origin_px + n, dtype=np.float64) + 0.5) * mpp


# ----------------------------------------------------------------------------------------------------
# textures
# ----------------------------------------------------------------------------------------------------
def _periodic_blur(image: NDArray[np.float32], sigma_px: float) -> NDArray[np.float32]:
    """Gaussian blur with periodic boundaries (in Fourier space)."""
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.rfftfreq(image.shape[1])[None, :]
    transfer = np.exp(-2.0 * (np.pi * sigma_px) ** 2 * (fy * fy + fx * fx))
    return np.fft.irfft2(np.fft.rfft2(image) * transfer, s=image.shape).astype(np.float32)


@lru_cache(maxsize=8)
def _textures(seed: int) -> dict[str, list[NDArray[np.float32]]]:
    """Periodic textures (mean 1) at 0.25 µm/px and their 2x mip-maps.

    chromatin: blobby heterochromatin (~0.5-1 µm); granules: sparse X-gal crystals on a faint diffuse
    background; fibres: wavy collagen-like streaks whose orientation drifts slowly.
    """
    rng = np.random.default_rng([seed & 0xFFFFFFFF, _S_TEXTURE])
    n = _TEX_PX
    chromatin = _periodic_blur(rng.standard_normal((n, n)).astype(np.float32), 1.6)
    chromatin = np.exp(0.8 * chromatin / chromatin.std())
    granules = np.zeros((n, n), np.float32)
    m = int(0.02 * n * n)
    gy, gx = rng.integers(0, n, m), rng.integers(0, n, m)
    np.add.at(granules, (gy, gx), rng.uniform(0.5, 1.5, m).astype(np.float32))
    granules = _periodic_blur(granules, 1.5)
    granules = 0.35 + 0.65 * granules / granules.mean()
    fibres = np.zeros((3 * n, 3 * n), np.float32)
    angle_field = _periodic_blur(rng.standard_normal((n // 8, n // 8)).astype(np.float32), 3.0)
    angle_field = cv2.resize(angle_field / angle_field.std(), (n, n), interpolation=cv2.INTER_CUBIC)
    for _ in range(700):
        y, x = rng.uniform(0, n, 2)
        points = []
        step = 4.0
        for _ in range(int(rng.integers(20, 60))):
            theta = 0.6 * angle_field[int(y) % n, int(x) % n]
            points.append((x + n, y + n))
            x, y = x + step * math.cos(theta), y + step * math.sin(theta)
        pts = np.round(np.array(points) * 16).astype(np.int32).reshape(-1, 1, 2)
        value = float(rng.uniform(0.4, 1.0))
        for dy in (-n, 0, n):
            for dx in (-n, 0, n):
                cv2.polylines(
                    fibres,
                    [pts + np.array([dx * 16, dy * 16], np.int32)],
                    False,
                    value,
                    2,
                    cv2.LINE_AA,
                    4,
                )
    fibres = np.ascontiguousarray(
        fibres[n : 2 * n, n : 2 * n]
    )  # one period, wrapped copies drawn above
    fibres = _periodic_blur(fibres, 1.0)
    fibres = 1.0 + 0.45 * (fibres / fibres.mean() - 1.0)  # pale collagen between brighter fibres

    out: dict[str, list[NDArray[np.float32]]] = {}
    for name, tex in (("chromatin", chromatin), ("granules", granules), ("fibres", fibres)):
        tex = (tex / tex.mean()).astype(np.float32)
        mips = [tex]
        while mips[-1].shape[0] > 8:
            t = mips[-1]
            mips.append(0.25 * (t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2]))
        out[name] = mips
    return out


def _texture_indices(
    origin_px: int, n: int, mpp: float, offset_um: float
) -> tuple[int, NDArray[np.intp]]:
    """Mip level and wrapped texture indices for pixel centres ``origin_px ..`` at ``mpp``."""
    level = max(0, min(int(math.floor(math.log2(max(mpp, _TEX_MPP) / _TEX_MPP) + 1e-9)), 6))
    tex_mpp = _TEX_MPP * (1 << level)
    size = _TEX_PX >> level
    pos = _pixel_centres_um(origin_px, n, mpp) + offset_um
    return level, (np.floor(pos / tex_mpp).astype(np.int64) % size).astype(np.intp)


def _sample(
    mips: list[NDArray[np.float32]],
    oy: int,
    ox: int,
    shape: tuple[int, int],
    mpp: float,
    offset_um: float,
) -> NDArray[np.float32]:
    level, iy = _texture_indices(oy, shape[0], mpp, offset_um)
    _, ix = _texture_indices(ox, shape[1], mpp, offset_um * 0.618)
    return mips[level][iy[:, None], ix[None, :]]


# ----------------------------------------------------------------------------------------------------
# sensor noise
# ----------------------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _noise_bank(seed: int) -> NDArray[np.float32]:
    """Standard normal noise (B + T, B + T, 3) with the last T rows/columns wrapping the first ones."""
    n, t = _NOISE_BANK, _NOISE_TILE
    bank = np.random.default_rng([seed & 0xFFFFFFFF, 7919]).standard_normal((n, n, 3), np.float32)
    return np.pad(bank, ((0, t), (0, t), (0, 0)), mode="wrap")


def _noise(seed: int, mpp: float, oy: int, ox: int, shape: tuple[int, int]) -> NDArray[np.float32]:
    """Standard normal noise (Y, X, 3), a function of the global pixel position only.

    Each global noise tile (``_NOISE_TILE`` px) is a window of a per-seed noise bank at an offset hashed
    from (seed, grid, tile y, tile x): as random as fresh numbers to the eye, at memcpy speed.
    """
    h, w = shape
    t = _NOISE_TILE
    key = int(round(mpp * 1e6))
    bank = _noise_bank(seed)
    out = np.empty((h, w, 3), np.float32)
    tys = np.arange(oy // t, (oy + h - 1) // t + 1, dtype=np.int64)
    txs = np.arange(ox // t, (ox + w - 1) // t + 1, dtype=np.int64)
    gy, gx = np.meshgrid(tys, txs, indexing="ij")
    offy = (_uniform(seed, _S_NOISE + key, gx, gy) * _NOISE_BANK).astype(np.int64)
    offx = (_uniform(seed, _S_NOISE + key + 1, gx, gy) * _NOISE_BANK).astype(np.int64)
    for a, ty in enumerate(tys.tolist()):
        for b, tx in enumerate(txs.tolist()):
            y0, x0 = max(oy, ty * t), max(ox, tx * t)
            y1, x1 = min(oy + h, (ty + 1) * t), min(ox + w, (tx + 1) * t)
            by, bx = int(offy[a, b]) + y0 - ty * t, int(offx[a, b]) + x0 - tx * t
            out[y0 - oy : y1 - oy, x0 - ox : x1 - ox] = bank[by : by + y1 - y0, bx : bx + x1 - x0]
    return out
