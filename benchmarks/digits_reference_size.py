"""How large must the digits score's held-out reference be for FD at n = 400-500 to be stable?

For each reference size m, draw (``--repeats`` times) two disjoint random sets from all 1,797
digits: n "samples" (real digits standing in for a perfect generator) and m reference images, and
also n draws of the ten class Gaussians fitted to the rest; compute both FDs (classifier features,
pixels) against the reference.  Prints, per m, the mean and the standard deviation over repeats
of the real FD and of the class-Gaussian FD, and how many standard deviations apart they are.
A reference is large enough when that separation no longer grows much with m.

    python benchmarks/digits_reference_size.py --n 400 --repeats 20
"""
from __future__ import annotations

import argparse

import numpy as np

from ddpm_check.data import digits_images, digits_labels
from ddpm_check.metrics import _Gaussian, digit_classifier, frechet_distance, to_classifier_input


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--sizes", default="150,300,450,596,800")
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    c = digit_classifier()
    x = to_classifier_input(digits_images(8, "all"))
    y = digits_labels("all")
    fx = c.features(x)
    print(f"n = {a.n}, {a.repeats} repeats; mean ± sd over repeats")
    print(f"{'m':>5} | {'real FD feat':>16} | {'class-G FD feat':>16} | {'sep':>5} | {'real FD pix':>16} | "
          f"{'class-G FD pix':>16} | {'sep':>5}")
    for m in (int(s) for s in a.sizes.split(",")):
        if m + a.n > len(x) - 200:
            print(f"{m:>5} | too large for n = {a.n} (needs {m + a.n} + 200 to fit the baseline)")
            continue
        rf, gf, rp, gp = [], [], [], []
        for r in range(a.repeats):
            rng = np.random.default_rng(r)
            perm = rng.permutation(len(x))
            s, ref, rest = perm[:a.n], perm[a.n:a.n + m], perm[a.n + m:]
            gs = [_Gaussian.fit(x[rest][y[rest] == k]) for k in range(10)]
            props = np.bincount(y[rest], minlength=10) / len(rest)
            ks = rng.choice(10, size=a.n, p=props)
            base = np.empty((a.n, 64))
            for k in range(10):
                base[ks == k] = gs[k].draw(int((ks == k).sum()), rng)
            base = base.clip(0, 1)
            rf.append(frechet_distance(fx[s], fx[ref]))
            gf.append(frechet_distance(c.features(base), fx[ref]))
            rp.append(frechet_distance(x[s], x[ref]))
            gp.append(frechet_distance(base, x[ref]))

        def ms(v):
            return f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}"

        def sep(u, v):
            d = np.asarray(v) - np.asarray(u)  # paired: same reference
            return f"{d.mean() / d.std(ddof=1):5.1f}"

        print(f"{m:>5} | {ms(rf):>16} | {ms(gf):>16} | {sep(rf, gf)} | {ms(rp):>16} | {ms(gp):>16} | {sep(rp, gp)}")


if __name__ == "__main__":
    main()
