"""Fit the polynomial of erf-GELU's fast tail (csrc/cpu/simd.h, normal_tail_fast).

Phi(-x) = erfcx(z) / 2 * exp(-z^2), z = x / sqrt(2), 0 <= x <= 13. With t = 1 / (1 + p z) the scaled
function erfcx(z) / 2 = t * Q(t) where Q is smooth on t in [1 / (1 + p zmax), 1]; Q is fitted as a
polynomial of degree `deg` for relative error (iteratively reweighted least squares on Chebyshev
nodes, close to minimax), then evaluated the way the kernel does: float32 coefficients, Estrin's
scheme, every operation rounded to float32.

    python bench/fit_gelu_tail.py            # p = 0.5, degree 9: the kernel's coefficients
"""
import argparse

import numpy as np
from scipy.special import erfcx

f32 = np.float32


def fit(p, deg, zmax, iters=30, nodes=4000):
    tmin = 1 / (1 + p * zmax)
    t = tmin + (1 - tmin) * (0.5 - 0.5 * np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes))
    z = (1 - t) / (p * t)
    f = erfcx(z) / t
    V = np.vander(t, deg + 1, increasing=True)
    w = 1 / f
    for _ in range(iters):
        c, *_ = np.linalg.lstsq(V * w[:, None], f * w, rcond=None)
        e = (V @ c - f) / f
        w = w * np.abs(e) ** 0.5
        w = np.maximum(w / w.max(), 1e-6) / f
    tt = np.linspace(tmin, 1, 200001)
    ff = erfcx((1 - tt) / (p * tt)) / tt
    return c, np.max(np.abs(np.polyval(c[::-1], tt) - ff) / ff)


def estrin_f32(c, t):
    def fma(a, b, d):  # one rounding, as the FMA
        return (np.float64(a) * np.float64(b) + np.float64(d)).astype(f32)
    c = list(c) + [f32(0)] * (16 - len(c))
    t2 = (t * t).astype(f32)
    t4 = (t2 * t2).astype(f32)
    t8 = (t4 * t4).astype(f32)
    q = [fma(c[2 * i + 1], t, c[2 * i]) for i in range(8)]
    r = [fma(q[2 * i + 1], t2, q[2 * i]) for i in range(4)]
    return fma(fma(r[3], t4, r[2]), t8, fma(r[1], t4, r[0]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--p", type=float, default=0.5)
    ap.add_argument("--deg", type=int, default=9)
    ap.add_argument("--xmax", type=float, default=13.0)
    a = ap.parse_args()
    c, err = fit(a.p, a.deg, a.xmax / np.sqrt(2))
    c32 = (c * 0.5).astype(f32)  # the 1/2 of Phi folded in
    x = np.linspace(0, a.xmax, 400001).astype(f32)
    t = (f32(1) / (f32(1) + f32(a.p / np.sqrt(2)) * x)).astype(f32)
    got = (t * estrin_f32(c32, t)).astype(np.float64)
    ref = 0.5 * erfcx(x.astype(np.float64) / np.sqrt(2))
    e32 = np.abs(got - ref) / ref
    print(f"p = {a.p}, degree {a.deg}: fit error {err:.2e}, float32 evaluation max {e32.max():.2e}")
    print("coefficients (t^0 first):")
    for v in c32:
        print(f"  {v:.9e}f")


if __name__ == "__main__":
    main()
