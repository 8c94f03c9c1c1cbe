"""What reading and linting a locking document cost as it grows, and what reading a splat costs.

Run: ``python benchmarks/bench_spec.py``. Every figure and ratio comes from this one run (best of
nine for lint, three otherwise). Target: lint is near-linear in the number of rules --
10,000 rules in well under a second, and the time per rule roughly flat from 1,000 to 10,000.
"""

from __future__ import annotations

import time
from pathlib import Path

from kvmlock import spec
from kvmlock.splat import read_log


def best(fn, repeats: int = 3) -> float:
    out = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t0)
    return out


def chain_with_knots(n: int) -> spec.Spec:
    """n rules in one long order plus a second set of n crossing edges, closed into a cycle."""
    rules = [spec.Rule("order", f"l{i}", inner=f"l{i + 1}", line=i) for i in range(n)]
    rules += [spec.Rule("order", f"l{i}", inner=f"l{(i * 7) % n}", line=i) for i in range(n)]
    rules.append(spec.Rule("order", f"l{n}", inner="l0", line=n))
    return spec.Spec(rules=rules)


def document(n: int) -> str:
    items = "\n".join(f"- lock_{i} is taken outside lock_{i + 1}\n" for i in range(n))
    return f"Acquisition Orders\n------------------\n\n{items}"


def main() -> None:
    print("lint (rules -> seconds, microseconds per rule)")
    base = None
    for n in (500, 1_000, 2_500, 5_000):
        s = chain_with_knots(n)
        t = best(lambda s=s: spec.lint(s), 9)
        per = t / len(s.rules) * 1e6
        base = base or per
        print(f"  {len(s.rules):>6} rules  {t:7.3f} s  {per:6.2f} us/rule  "
              f"({per / base:.2f}x the per-rule cost at 1,001 rules)")
    print("read (docutils parse + rules)")
    for n in (100, 1_000, 10_000):
        text = document(n)
        t = best(lambda text=text: spec.parse(text), 1)
        print(f"  {n:>6} rules  {t:7.3f} s")
    log = (Path(__file__).parents[1] / "tests/splat/fixtures/nx_huge_pages.commit").read_text()
    t = best(lambda: read_log(log * 50))
    print(f"splat: 50 four-link reports in {t * 1000:.1f} ms ({t / 50 * 1e6:.0f} us each)")


if __name__ == "__main__":
    main()
