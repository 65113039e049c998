"""Robust aggregation rules against straightforward torch versions of the same rules, in one run.

    python benchmarks/aggregation.py [--dims 1e6 1e7] [--repeats 5] [--device cpu|cuda] [--threads 2]

n models (default 32, f = 8 of them far away) of d float32 parameters are stacked once; each rule is
timed on that matrix (stacking is the same for every rule and is left out), as implemented in
`p2pfl.aggregation` ("ours") and the way one would first write it ("baseline"): median by
`torch.median(dim=0)`, trimmed mean by `torch.sort(dim=0)`, Krum and Multi-Krum by `torch.cdist`,
Weiszfeld with a `torch.norm` over the rows every iteration, clipping with a Python loop over rows.
The table gives median wall times, the speedup, and the largest difference between the two results
(`lower` where the baseline takes the lower median of an even count, a different definition). Krum
may pick another of the near-equivalent honest models than the baseline: `torch.cdist` on the raw
float32 rows carries score errors (~0.3% at d = 1e6) larger than the honest models' score spread,
the centred Gram matrix does not. On CUDA the table also gives GB/s: bytes of the input matrix over
the time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from p2pfl.aggregation.clipping import centered_clipping, clipped_gossip
from p2pfl.aggregation.geometric_median import geometric_median
from p2pfl.aggregation.krum import krum, multi_krum
from p2pfl.aggregation.median import coordinate_median, trimmed_mean


def baseline_krum_scores(matrix: torch.Tensor, f: int) -> torch.Tensor:
    n = matrix.shape[0]
    distances = torch.cdist(matrix, matrix) ** 2
    distances.fill_diagonal_(float("inf"))
    return torch.topk(distances, n - f - 2, dim=1, largest=False).values.sum(dim=1)


def baseline_weiszfeld(matrix: torch.Tensor, iterations: int, eps: float) -> torch.Tensor:
    z = matrix.mean(dim=0)
    for _ in range(iterations):
        inverse = 1.0 / torch.norm(matrix - z, dim=1).clamp_min(eps)
        z = (inverse / inverse.sum()) @ matrix
    return z


def baseline_centered_clipping(
    matrix: torch.Tensor, center: torch.Tensor, tau: float, iterations: int
) -> torch.Tensor:
    v = center.clone()
    for _ in range(iterations):
        step = torch.zeros_like(v)
        for row in matrix:
            diff = row - v
            step += diff * torch.clamp(tau / torch.norm(diff), max=1.0)
        v += step / matrix.shape[0]
    return v


def baseline_clipped_gossip(
    matrix: torch.Tensor, center: torch.Tensor, weights: torch.Tensor, tau: float
) -> torch.Tensor:
    out = center.clone()
    for row, weight in zip(matrix, weights, strict=True):
        diff = row - center
        out += weight * diff * torch.clamp(tau / torch.norm(diff), max=1.0)
    return out


def timed(
    fn: Callable[[torch.Tensor], torch.Tensor], matrix: torch.Tensor, scratch: bool, repeats: int
) -> tuple[float, torch.Tensor]:
    """Median seconds of `fn(matrix)` over `repeats` runs after one warm-up, and the last result.

    With `scratch`, each run gets a fresh copy of the matrix, made before the clock starts, because
    the rules centre their own stacked matrix in place (`overwrite=True`); the copy stands for the
    `stack` that every rule, ours or not, starts with, and is not timed for either.
    """
    cuda = matrix.device.type == "cuda"
    times, result = [], None
    for run in range(repeats + 1):
        argument = matrix.clone() if scratch else matrix
        if cuda:
            torch.cuda.synchronize(matrix.device)
        start = time.perf_counter()
        result = fn(argument)
        if cuda:
            torch.cuda.synchronize(matrix.device)
        if run:
            times.append(time.perf_counter() - start)
        del argument
    return statistics.median(times), result


def cases(matrix: torch.Tensor, args: argparse.Namespace) -> dict[str, tuple[Callable, Callable]]:
    """name -> (ours on a scratch copy, baseline on the matrix)."""
    n, f = matrix.shape[0], args.f
    center = matrix[0].clone()  # the own model: honest, the reference of the distances
    weights = torch.full((n,), 1.0 / (n + 1), device=matrix.device)
    tau, gm_iterations, cc_iterations = args.tau, args.gm_iterations, args.cc_iterations

    def base_krum(x: torch.Tensor) -> torch.Tensor:
        return x[torch.argmin(baseline_krum_scores(x, f))]

    def base_multi_krum(x: torch.Tensor) -> torch.Tensor:
        chosen = torch.topk(baseline_krum_scores(x, f), n - f, largest=False).indices
        return x[chosen].mean(dim=0)

    def base_trimmed_mean(x: torch.Tensor) -> torch.Tensor:
        return torch.sort(x, dim=0).values[f : n - f].mean(dim=0)

    return {
        "median": (coordinate_median, lambda x: torch.median(x, dim=0).values),
        "trimmed_mean": (lambda x: trimmed_mean(x, f), base_trimmed_mean),
        "krum": (lambda x: krum(x, f, center, overwrite=True), base_krum),
        "multi_krum": (lambda x: multi_krum(x, f, None, center, overwrite=True), base_multi_krum),
        "geometric_median": (
            lambda x: geometric_median(x, center, iterations=gm_iterations, eps=1e-6, overwrite=True),
            lambda x: baseline_weiszfeld(x, gm_iterations, 1e-6),
        ),
        "centered_clipping": (
            lambda x: centered_clipping(x, center, tau=tau, iterations=cc_iterations, overwrite=True),
            lambda x: baseline_centered_clipping(x, center, tau, cc_iterations),
        ),
        "clipped_gossip": (
            lambda x: clipped_gossip(x, center, weights, tau=tau, overwrite=True),
            lambda x: baseline_clipped_gossip(x, center, weights, tau),
        ),
    }


SCRATCH = {"krum", "multi_krum", "geometric_median", "centered_clipping", "clipped_gossip"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dims", type=float, nargs="+", default=[1e6, 1e7])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--f", type=int, default=8)
    parser.add_argument("--tau", type=float, default=1.0)
    parser.add_argument("--gm-iterations", type=int, default=10, help="Weiszfeld iterations, both versions")
    parser.add_argument("--cc-iterations", type=int, default=3, help="centred clipping iterations, both")
    parser.add_argument("--rules", nargs="+", help="only these rules")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    print(
        f"n={args.n} f={args.f} float32 device={device} threads={torch.get_num_threads()} "
        f"repeats={args.repeats} torch={torch.__version__} weiszfeld_iterations={args.gm_iterations} "
        f"clipping_iterations={args.cc_iterations} load_average={os.getloadavg()[0]:.1f}/{os.cpu_count()}"
    )
    header = f"{'rule':<18} {'d':>9} {'ours ms':>10} {'baseline ms':>12} {'speedup':>8} {'max|diff|':>10}"
    if cuda:
        header += f" {'ours GB/s':>10} {'base GB/s':>10}"
    print(header)
    print("-" * len(header))
    gen = torch.Generator(device=device).manual_seed(args.seed)
    for dim in args.dims:
        d = int(dim)
        # honest models near a common point, the last f far away; built in place, one (n, d) matrix
        matrix = torch.randn(args.n, d, generator=gen, device=device).mul_(0.01)
        matrix.add_(torch.randn(d, generator=gen, device=device))
        matrix[args.n - args.f :].add_(5.0)
        nbytes = matrix.numel() * matrix.element_size()
        for name, (ours, baseline) in cases(matrix, args).items():
            if args.rules and name not in args.rules:
                continue
            ours_s, ours_out = timed(ours, matrix, name in SCRATCH, args.repeats)
            base_s, base_out = timed(baseline, matrix, False, args.repeats)
            lower = name == "median" and args.n % 2 == 0
            diff = "lower" if lower else f"{(ours_out - base_out).abs().max().item():.1e}"
            row = f"{name:<18} {d:>9.0e} {1e3 * ours_s:>10.1f} {1e3 * base_s:>12.1f} {base_s / ours_s:>7.1f}x"
            row += f" {diff:>10}"
            if cuda:
                row += f" {nbytes / ours_s / 1e9:>10.1f} {nbytes / base_s / 1e9:>10.1f}"
            print(row, flush=True)
            del ours_out, base_out
        del matrix


if __name__ == "__main__":
    main()
