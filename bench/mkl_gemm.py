# MKL (through PyTorch) on the LM's product shapes, 2 threads, best of 5 after a warm-up: the
# peer of `diagc bench`'s ceiling (docs/benchmarks.md). Usage: python3 bench/mkl_gemm.py
import time, torch
torch.set_num_threads(2)
def rate(m, n, k, ta=False, tb=False):
    a = torch.rand(k, m).t() if ta else torch.rand(m, k)
    b = torch.rand(n, k).t() if tb else torch.rand(k, n)
    best = 1e9
    for i in range(6):
        t = time.perf_counter(); torch.mm(a, b); d = time.perf_counter() - t
        if i: best = min(best, d)
    return 2 * m * n * k / best / 1e9
for (m, n, k) in [(1024, 1024, 1024), (700, 10000, 512), (700, 512, 10000), (512, 10000, 700), (700, 2048, 512), (700, 512, 2048), (700, 512, 512), (512, 512, 700)]:
    print(f"{m}x{k} by {k}x{n}: NN {rate(m,n,k):.0f}  NT {rate(m,n,k,tb=True):.0f}  TN {rate(m,n,k,ta=True):.0f} GFLOP/s")
