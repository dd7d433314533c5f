"""`atft bench softrank`: peak memory and time of the RankIC soft rank, chunked vs dense.

For K days x N stocks it runs forward + backward of ``1 - Pearson(soft_rank(z(pred)), rank(y))``
per day, once with :func:`atft_core.losses.soft_rank_rows` (chunked, its own backward: O(N * chunk)
memory per block) and once with the dense autograd formula it replaced (an N x N sigmoid matrix
per day, kept by autograd for backward). Peak memory is the process's resident-set high-water
mark (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` before each run) minus the
resident set before the run; on CUDA it is ``torch.cuda.max_memory_allocated``. Prints figures,
asserts nothing.
"""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    from atft_core.cli import bench_subparsers

    p = bench_subparsers(sub).add_parser("softrank", help="soft-rank peak memory and time vs stock count")
    p.add_argument("--sizes", default="1000,2000,4000", help="comma list of stocks per day N")
    p.add_argument("--days", type=int, default=8, help="days K per batch")
    p.add_argument("--dense-max", type=int, default=2000,
                   help="largest N for the dense baseline (its N^2 matrices take GBs beyond)")
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_run)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _malloc_returns_big_blocks() -> None:
    """glibc: serve every block >= 64 KiB by mmap, so a free returns it to the OS at once and the
    resident set tracks live tensors (else freed blocks stay resident and blur the peak)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _Peak:
    """Peak bytes above the level at entry (CPU: resident set; CUDA: allocator)."""

    def __init__(self, device) -> None:
        self.device = device

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.base = _status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.peak = _status_kb("VmHWM") * 1024 - self.base


def _dense_rank(v, t):
    """The replaced formula: 1/2 + sum_j sigmoid((v_i - v_j) / T) through autograd, (K, N) -> (K, N)."""
    import torch

    return 0.5 + torch.sigmoid((v.unsqueeze(-1) - v.unsqueeze(-2)) / t).sum(-1)


def _run(args) -> int:
    import time

    import torch

    from atft_core.losses import _pearson_rows, _standardise_rows, exact_rank_rows, soft_rank_rows

    device = torch.device(args.device)
    _malloc_returns_big_blocks()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 2 or args.days < 1:
        print("atft bench softrank: --sizes needs stock counts >= 2 and --days >= 1")
        return 2
    k, t = args.days, args.temperature
    print(f"atft bench softrank: K={k} days, T={t}, device={device}, threads={torch.get_num_threads()}")
    print(f"{'N':>6} {'method':<8} {'peak MB':>9} {'bytes/(K*N)':>12} {'seconds':>8}")
    rows: dict[str, list[tuple[int, int]]] = {"chunked": [], "dense": []}
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        pred = torch.randn(k, n, generator=g).to(device)
        y = torch.randn(k, n, generator=g).to(device)
        valid = torch.ones(k, n, dtype=torch.bool, device=device)
        w = valid.float()
        cnt = w.sum(-1)
        ry = exact_rank_rows(y, valid)
        for method in ("chunked", "dense"):
            if method == "dense" and n > args.dense_max:
                est = 3 * k * n * n * 4  # diff, sigmoid, saved sigmoid: >= 3 fp32 N x N per day
                print(f"{n:>6} {method:<8} {'skipped':>9} {'':>12} {'':>8}  (>= {est / 2**20:,.0f} MB by "
                      f"its 3 N x N fp32 matrices per day; raise --dense-max to measure)")
                continue
            p = pred.clone().requires_grad_(True)
            t0 = time.perf_counter()
            with _Peak(device) as peak:
                z = _standardise_rows(p, w, cnt)
                r = soft_rank_rows(z, valid, t) if method == "chunked" else _dense_rank(z, t)
                (1 - _pearson_rows(r, ry, w, cnt)).mean().backward()
                del r, z
            sec = time.perf_counter() - t0
            rows[method].append((n, peak.peak))
            print(f"{n:>6} {method:<8} {peak.peak / 2**20:>9.1f} {peak.peak / (k * n):>12.0f} {sec:>8.3f}")
    for method, pts in rows.items():
        if len(pts) >= 2:
            steps = ", ".join(f"N x{b[0] / a[0]:.0f}: peak x{b[1] / max(a[1], 1):.2f}" for a, b in zip(pts, pts[1:]))
            print(f"growth {method}: {steps}  (O(N) -> x2 per doubling, O(N log N) -> ~x2.2, O(N^2) -> x4)")
    return 0
