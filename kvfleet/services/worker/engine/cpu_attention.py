"""Paged decode attention on CPU: a small C kernel that reads K and V in place from the pages.

The torch path (``attention.decode_attention``) first copies every key and value a step needs
out of the pages, then runs two batched GEMMs of a few rows each; both the copy and the many
tiny GEMMs cost more than the arithmetic. This kernel walks each sequence's page table
instead: per (sequence, KV head) it scores its group of queries against the keys of a block of
positions, keeps a running softmax, and accumulates the values, so the KV of a step is read
once and never copied. Threads split the (sequence, KV head) pairs (OpenMP: the same runtime
and thread count as torch).

The kernel is compiled by the machine's C compiler on first use (a second or two) into the
kvfleet cache folder, per CPU; without a compiler the engine keeps the torch path. It takes
float32 queries and float32 or bfloat16 KV.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MAX_GROUP = 16  # queries per KV head the kernel takes
MAX_HEAD_DIM = 256

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_G 16
#define MAX_D 256
#define BLOCK 64

static inline float bf16_to_f32(uint16_t x) {
    uint32_t u = ((uint32_t)x) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#define DEFINE_KERNEL(NAME, T, LOAD)                                                        \
void NAME(const float *q, float *out, const T *kv, const int64_t *page_table,               \
          const int64_t *lens, int64_t B, int64_t P, int64_t H, int64_t G, int64_t D,       \
          int64_t tpp, int64_t page_stride, int64_t k_off, int64_t v_off, float scale) {    \
    int64_t row = H * D;                                                                    \
    _Pragma("omp parallel for collapse(2) schedule(static)")                                \
    for (int64_t b = 0; b < B; b++) {                                                       \
        for (int64_t h = 0; h < H; h++) {                                                   \
            float m[MAX_G], l[MAX_G], acc[MAX_G * MAX_D], sc[MAX_G * BLOCK];                \
            const float *qh = q + (b * H + h) * G * D;                                      \
            int64_t n = lens[b];                                                            \
            for (int64_t g = 0; g < G; g++) { m[g] = -INFINITY; l[g] = 0.0f; }              \
            memset(acc, 0, sizeof(float) * G * D);                                          \
            for (int64_t s0 = 0; s0 < n; s0 += BLOCK) {                                     \
                int64_t s1 = s0 + BLOCK < n ? s0 + BLOCK : n;                               \
                for (int64_t s = s0; s < s1; s++) {                                         \
                    const T *k = kv + page_table[b * P + s / tpp] * page_stride + k_off     \
                                 + (s % tpp) * row + h * D;                                 \
                    for (int64_t g = 0; g < G; g++) {                                       \
                        const float *qg = qh + g * D;                                       \
                        float dot = 0.0f;                                                   \
                        _Pragma("omp simd reduction(+:dot)")                                \
                        for (int64_t d = 0; d < D; d++) dot += qg[d] * LOAD(k[d]);          \
                        sc[g * BLOCK + (s - s0)] = dot * scale;                             \
                    }                                                                       \
                }                                                                           \
                for (int64_t g = 0; g < G; g++) {                                           \
                    float bm = m[g];                                                        \
                    for (int64_t s = 0; s < s1 - s0; s++)                                   \
                        bm = sc[g * BLOCK + s] > bm ? sc[g * BLOCK + s] : bm;               \
                    float c = expf(m[g] - bm);                                              \
                    l[g] *= c;                                                              \
                    for (int64_t d = 0; d < D; d++) acc[g * D + d] *= c;                    \
                    m[g] = bm;                                                              \
                    for (int64_t s = 0; s < s1 - s0; s++) {                                 \
                        float p = expf(sc[g * BLOCK + s] - bm);                             \
                        sc[g * BLOCK + s] = p;                                              \
                        l[g] += p;                                                          \
                    }                                                                       \
                }                                                                           \
                for (int64_t s = s0; s < s1; s++) {                                         \
                    const T *v = kv + page_table[b * P + s / tpp] * page_stride + v_off     \
                                 + (s % tpp) * row + h * D;                                 \
                    for (int64_t g = 0; g < G; g++) {                                       \
                        float p = sc[g * BLOCK + (s - s0)];                                 \
                        float *a = acc + g * D;                                             \
                        _Pragma("omp simd")                                                 \
                        for (int64_t d = 0; d < D; d++) a[d] += p * LOAD(v[d]);             \
                    }                                                                       \
                }                                                                           \
            }                                                                               \
            float *o = out + (b * H + h) * G * D;                                           \
            for (int64_t g = 0; g < G; g++) {                                               \
                float inv = l[g] > 0.0f ? 1.0f / l[g] : 0.0f;                               \
                for (int64_t d = 0; d < D; d++) o[g * D + d] = acc[g * D + d] * inv;        \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
}

#define LOAD_F32(x) (x)
#define LOAD_BF16(x) bf16_to_f32(x)
DEFINE_KERNEL(paged_decode_f32, float, LOAD_F32)
DEFINE_KERNEL(paged_decode_bf16, uint16_t, LOAD_BF16)
"""

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def _compiler() -> str | None:
    cc = os.environ.get("CC") or (sysconfig.get_config_var("CC") or "").split(" ")[0]
    for name in (cc, "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _cache_dir() -> Path:
    root = os.environ.get("KVFLEET_CACHE_DIR") or str(Path.home() / ".cache" / "kvfleet")
    return Path(root) / "kernels"


def _cpu_key() -> str:
    """The CPU the kernel is built for (-march=native): its flags, so that a cache folder
    shared by different machines never hands one the other's build."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return hashlib.sha256(f"{platform.machine()}|{flags}".encode()).hexdigest()[:12]


def _build() -> ctypes.CDLL | None:
    cc = _compiler()
    if cc is None:
        log.info("no C compiler: paged decode attention stays on the torch path")
        return None
    digest = hashlib.sha256(_SOURCE.encode()).hexdigest()[:12]
    out = _cache_dir() / f"paged_decode-{digest}-{_cpu_key()}.so"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            src = Path(tmp) / "paged_decode.c"
            src.write_text(_SOURCE)
            so = Path(tmp) / out.name
            cmd = [
                cc,
                "-O3",
                "-march=native",
                "-fopenmp",
                "-fno-math-errno",
                "-shared",
                "-fPIC",
                "-o",
                str(so),
                str(src),
            ]
            try:
                subprocess.run(cmd, check=True, capture_output=True, timeout=120)
            except (OSError, subprocess.SubprocessError) as exc:
                err = getattr(exc, "stderr", b"") or b""
                log.warning(
                    "building the paged decode kernel failed (%s): %s; the torch path is used",
                    exc,
                    err.decode(errors="replace")[-500:],
                )
                return None
            os.replace(so, out)  # atomic: concurrent builders all end with a whole file
    lib = ctypes.CDLL(str(out))
    args = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 9 + [ctypes.c_float]
    for name in ("paged_decode_f32", "paged_decode_bf16"):
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = None
    return lib


def kernel_library() -> ctypes.CDLL | None:
    """The compiled kernel (built on first call), or None where it cannot be built.
    ``KVFLEET_CPU_ATTENTION=torch`` turns it off."""
    global _lib, _tried
    if os.environ.get("KVFLEET_CPU_ATTENTION") == "torch":
        return None
    with _lock:
        if not _tried:
            _tried = True
            _lib = _build()
    return _lib


def supports(num_heads: int, num_kv_heads: int, head_dim: int, kv_dtype: torch.dtype) -> bool:
    return (
        num_heads // num_kv_heads <= MAX_GROUP
        and head_dim <= MAX_HEAD_DIM
        and kv_dtype in (torch.float32, torch.bfloat16)
    )


def paged_decode(
    q: torch.Tensor,
    flat: torch.Tensor,
    page_table: torch.Tensor,
    key_len: torch.Tensor,
    num_kv_heads: int,
    head_dim: int,
    tokens_per_page: int,
    page_stride: int,
    k_off: int,
    v_off: int,
) -> torch.Tensor:
    """q [B, num_heads * head_dim] float32 -> [B, num_heads * head_dim]; the keys of
    sequence b are positions [0, key_len[b]) through ``page_table`` [B, P] into ``flat``
    (K rows of the layer at ``k_off``, V rows at ``v_off``, pages ``page_stride`` apart)."""
    if torch.compiler.is_compiling():
        return paged_decode_op(
            q,
            flat,
            page_table,
            key_len,
            num_kv_heads,
            head_dim,
            tokens_per_page,
            page_stride,
            k_off,
            v_off,
        )
    lib = kernel_library()
    assert lib is not None
    b, p = page_table.shape
    h, d = num_kv_heads, head_dim
    q = q.contiguous()
    g = q.shape[1] // (h * d)
    out = torch.empty_like(q)
    table = page_table.contiguous()
    lens = key_len.contiguous()
    fn = lib.paged_decode_f32 if flat.dtype == torch.float32 else lib.paged_decode_bf16
    fn(
        q.data_ptr(),
        out.data_ptr(),
        flat.data_ptr(),
        table.data_ptr(),
        lens.data_ptr(),
        b,
        p,
        h,
        g,
        d,
        tokens_per_page,
        page_stride,
        k_off,
        v_off,
        d**-0.5,
    )
    return out


@torch.library.custom_op("kvfleet::paged_decode", mutates_args=())
def paged_decode_op(
    q: torch.Tensor,
    flat: torch.Tensor,
    page_table: torch.Tensor,
    key_len: torch.Tensor,
    num_kv_heads: int,
    head_dim: int,
    tokens_per_page: int,
    page_stride: int,
    k_off: int,
    v_off: int,
) -> torch.Tensor:
    """``paged_decode`` as one opaque op for ``torch.compile``."""
    return paged_decode(
        q,
        flat,
        page_table,
        key_len,
        num_kv_heads,
        head_dim,
        tokens_per_page,
        page_stride,
        k_off,
        v_off,
    )


@paged_decode_op.register_fake
def _paged_decode_fake(
    q, flat, page_table, key_len, num_kv_heads, head_dim, tokens_per_page, page_stride, k_off, v_off
):  # type: ignore[no-untyped-def]
    return torch.empty_like(q)
