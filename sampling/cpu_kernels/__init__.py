"""CPU kernels of the sampling engine, written in C++ as XLA FFI custom calls, built on first use.

One kernel so far: `paged_decode_attention` (source: paged_decode_attention.cc), the decode
step's attention over the paged KV pool read in place; `PagedKVCache.attend` uses it when the
engine's `decode_attention` resolves to "cpu_kernel" (`resolve_decode_attention`).

Building: the first use in a process compiles the source with the C++ compiler ($CXX, default
g++) into a shared library in a cache directory ($PPP_JAX_KERNEL_CACHE, else
$XDG_CACHE_HOME/ppp_jax/kernels, else ~/.cache/ppp_jax/kernels), named by a hash of the source,
the compiler command and its version, the jax version and the machine (architecture and CPU
flags: the library is built with -march=native, so a cache shared between different CPUs must
not hand one the other's build). The library is written to a temporary file and moved into
place with os.replace, so processes building at the same time do not see half a file. It is
then loaded with ctypes and its handler registered with `jax.ffi.register_ffi_target` for the
"cpu" platform, once per process.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("paged_decode_attention.cc")
TARGET = "ppp_paged_decode_attention"
SYMBOL = "PppPagedDecodeAttention"
# -fopenmp-simd: honour the `#pragma omp simd` reductions (vectorized float sums) without
# linking an OpenMP runtime; -ffp-contract=fast: FMAs in the dot products.
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-std=c++17", "-fopenmp-simd",
         "-ffp-contract=fast", "-fno-math-errno")
CHOICES = ("auto", "xla", "cpu_kernel")


class KernelBuildError(RuntimeError):
    """The kernel could not be compiled or loaded; the message carries the compiler's output."""


_lock = threading.Lock()
_registered: str | None = None  # path of the library registered in this process
_failed: str | None = None  # why the build failed in this process (auto does not retry)


def cache_dir() -> Path:
    """Where built libraries are kept (see the module docstring)."""
    if os.environ.get("PPP_JAX_KERNEL_CACHE"):
        return Path(os.environ["PPP_JAX_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ppp_jax" / "kernels"


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CXX") or "g++")


def _cpu_signature() -> str:
    """The CPU model and flags (Linux), so a -march=native build is only reused on its CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    keep = [ln for ln in text.splitlines() if ln.split(":")[0].strip() in ("model name", "flags")]
    return "\n".join(sorted(set(keep)))


def _build_key(cxx: list[str]) -> str:
    try:
        version = subprocess.run([*cxx, "--version"], capture_output=True, text=True,
                                 timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelBuildError(f"C++ compiler {shlex.join(cxx)!r} not usable: {e}") from None
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), shlex.join(cxx).encode(), version.encode(),
                 " ".join(FLAGS).encode(), jax.__version__.encode(),
                 platform.machine().encode(), _cpu_signature().encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:24]


def build(directory: Path | None = None) -> Path:
    """Compiles the kernel (unless this exact build is cached) and returns the library's path.

    Raises KernelBuildError with the compiler's message when there is no compiler or it fails.
    """
    cxx = _compiler()
    if not cxx or shutil.which(cxx[0]) is None:
        raise KernelBuildError(f"no C++ compiler: {os.environ.get('CXX') or 'g++'!r} not found "
                               f"(set $CXX to one)")
    directory = Path(directory) if directory is not None else cache_dir()
    out = directory / f"paged_decode_attention-{_build_key(cxx)}.so"
    if out.is_file():
        return out
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".build-", suffix=".so")
    os.close(fd)
    cmd = [*cxx, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise KernelBuildError(f"compiling {SOURCE.name} failed ({shlex.join(cmd)}):\n"
                                   f"{proc.stderr.strip() or proc.stdout.strip()}")
        os.replace(tmp, out)  # atomic: a concurrent build replaces it with identical bytes
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelBuildError(f"compiling {SOURCE.name} failed ({shlex.join(cmd)}): {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def ensure_registered() -> None:
    """Builds (or finds) the library and registers its FFI target, once per process.

    Raises KernelBuildError if it cannot be built or loaded."""
    global _registered
    with _lock:
        if _registered is not None:
            return
        path = build()
        try:
            lib = ctypes.cdll.LoadLibrary(str(path))
            jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(getattr(lib, SYMBOL)),
                                        platform="cpu")
        except (OSError, AttributeError) as e:
            raise KernelBuildError(f"loading {path} failed: {e}") from None
        _registered = str(path)


def available() -> bool:
    """Whether the kernel is registered or can be built now (a failed build is logged once as a
    warning and not retried in this process)."""
    global _failed
    if _registered is not None:
        return True
    if _failed is not None:
        return False
    try:
        ensure_registered()
        return True
    except KernelBuildError as e:
        _failed = str(e)
        log.warning("decode_attention: the CPU kernel could not be built, using the XLA path "
                    "instead: %s", e)
        return False


def resolve_decode_attention(choice: str, *, platform: str, num_devices: int) -> str:
    """The decode attention an engine uses: "xla" or "cpu_kernel".

    choice: "auto" (the kernel when the engine runs on one CPU device and the kernel builds,
      else XLA), "xla", or "cpu_kernel" (raises KernelBuildError if it cannot be built, and
      ValueError off a single CPU device: the custom call runs on the host, on unsharded pools).
    platform: the backend of the engine's devices ("cpu", "gpu", "tpu").
    num_devices: devices of the engine's (replica's) mesh.
    """
    if choice not in CHOICES:
        raise ValueError(f"decode_attention must be one of {CHOICES}, got {choice!r}")
    if choice == "xla":
        return "xla"
    single_cpu = platform == "cpu" and num_devices == 1
    if choice == "cpu_kernel":
        if not single_cpu:
            raise ValueError(f"decode_attention=cpu_kernel runs on one CPU device; this engine "
                             f"runs on {num_devices} {platform} device(s)")
        ensure_registered()
        return "cpu_kernel"
    return "cpu_kernel" if single_cpu and available() else "xla"


def paged_decode_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array,
                           page_table: jax.Array, cache_lens: jax.Array, layer: jax.Array, *,
                           compute_dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Softmax state of one decode step's queries over each row's cached tokens (the kernel).

    Args:
      q: [B, K, G, H] queries by kv head and group, in the compute dtype (or float32).
      k_pages, v_pages: [L, P, S, K, H] the whole pool, float32 or bfloat16, passed as is.
      page_table: int32 [B, W]; cache_lens: int32 [B]; layer: int32 [].
      compute_dtype: float32 or bfloat16: the dtype scores are rounded to (model cast points).
    Returns:
      m f32 [B, K, G] (the max score, -1e30 where nothing is cached), l f32 [B, K, G]
      (sum of exp(score - m)), acc f32 [B, K, G, H] (sum of exp(score - m) * value), over the
      positions < cache_lens[b] of row b.
    """
    ensure_registered()
    b, kvh, g, h = q.shape
    compute_dtype = jnp.dtype(compute_dtype)
    if compute_dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise ValueError(f"paged_decode_attention: compute dtype {compute_dtype} not supported")
    f32 = jnp.float32
    out = (jax.ShapeDtypeStruct((b, kvh, g), f32), jax.ShapeDtypeStruct((b, kvh, g), f32),
           jax.ShapeDtypeStruct((b, kvh, g, h), f32))
    call = jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")
    return call(q.astype(f32), k_pages, v_pages, page_table.astype(jnp.int32),
                cache_lens.astype(jnp.int32), jnp.asarray(layer, jnp.int32),
                scale=np.float32(h ** -0.5),
                round_bf16=np.int32(compute_dtype == jnp.dtype(jnp.bfloat16)))


def supports(compute_dtype, pool_dtype) -> bool:
    """Whether the kernel handles these dtypes (else the caller keeps the XLA path)."""
    ok = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
    return jnp.dtype(compute_dtype) in ok and jnp.dtype(pool_dtype) in ok
