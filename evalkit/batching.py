"""Fixed-shape micro-batches: how evalkit runs every network, so that no row's result depends
on the batch it came in, on the batch size or on the CPU thread count.

Why. Kernels choose their blocking, vectorisation and summation order from the shape of the
whole call and, on a CPU, from the number of intra-op threads (oneDNN 1×1 convolutions and
MKL matrix products split their sums across threads). So the low bits of one image's output
change with how many other images share its call: over a hundred diffusion steps such bits
flip pixels, and in a metric they change the last digits of a score. Which kernels are
affected differs between CPUs (AVX2, AVX-512, AMX) and GPUs, so a test that passes on one
machine can fail on the next; environment switches do not make one machine imitate another.

How. Every network call has one shape, whatever the user's batch size or the runner's split:

- :func:`micro_batches` cuts rows into chunks of exactly ``size``, padding the last chunk by
  repeating its first row; :func:`run_in_micro_batches` runs a network on them and drops the
  padded outputs. The size is a recorded setting (generator fingerprint or metric manifest),
  because it fixes the low bits.
- On the CPU every micro-batch runs with one intra-op thread, on a pool of as many worker
  threads as the process has intra-op threads (``torch.get_num_threads()``), so independent
  micro-batches still use every core and no sum is ever split across threads: results do
  not depend on the thread count (ATen's OpenMP backend, which PyTorch's x86 and aarch64
  wheels use; with another backend micro-batches run in the calling thread).
- Streaming consumers (metrics) collect rows in a :class:`RowBuffer` and run only complete
  micro-batches, so chunks start at fixed positions of the stream, the same for any update
  split, and only the final flush is padded.

What it guarantees: on one machine (CPU instruction set or GPU model) with the same library
versions, a row's output is a function of its own inputs and the micro-batch size. Kernels
treat the batch as an outer dimension, so the other rows of a call (padding included) and the
row's place in it do not change its arithmetic; the tests check this with batch sizes 1, 3, 5
and larger than the micro-batch, under ``ATEN_CPU_CAPABILITY=avx2`` and ``=default``. Other
machines may differ in the low bits (tolerances are documented where they matter).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from evalkit.errors import UsageError

T = TypeVar("T")
Rows = TypeVar("Rows", torch.Tensor, list)

_worker = threading.local()
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _forget_pools_after_fork() -> None:
    """A forked child has none of the parent's worker threads: it makes its own pools."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_after_fork)


def check_micro_batch(size: Any, what: str) -> int:
    """``size`` as a positive integer, else :class:`UsageError` naming ``what``."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UsageError(f"{what} must be a positive integer, got {size!r}")
    return size


def pad_rows(rows: Rows, size: int) -> Rows:
    """``rows`` (1 ≤ len ≤ size) lengthened to ``size`` by repeating its first row."""
    pad = size - len(rows)
    if pad <= 0:
        return rows
    if isinstance(rows, torch.Tensor):
        return torch.cat([rows, rows[:1].expand(pad, *rows.shape[1:])])
    return list(rows) + [rows[0]] * pad


def micro_batches(rows: Rows, size: int) -> Iterator[tuple[slice, Rows]]:
    """``(where, chunk)`` for consecutive chunks of ``rows``: every chunk has exactly ``size``
    rows (the last one padded by :func:`pad_rows`); ``where`` selects its real rows in ``rows``.
    """
    check_micro_batch(size, "micro-batch size")
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        yield slice(start, start + len(chunk)), pad_rows(chunk, size)


# --------------------------------------------------------------------------- one-thread workers


@functools.cache
def _openmp_backend() -> bool:
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def worker_count(device: str | torch.device) -> int:
    """How many micro-batches run at once: the intra-op thread count on a CPU, else 1.

    Inside :func:`single_threaded_ops` it is the count taken when the block was entered.
    """
    if getattr(_worker, "active", False):
        return 1
    held = getattr(_worker, "held", None)
    if held is not None:
        return held
    if torch.device(device).type != "cpu" or not _openmp_backend():
        return 1
    return max(1, torch.get_num_threads())


def _pool(width: int) -> ThreadPoolExecutor:
    """``width`` worker threads with one intra-op thread each (made once per width)."""
    with _pools_lock:
        pool = _pools.get(width)
        if pool is not None:
            return pool
        threads = torch.get_num_threads()
        pool = ThreadPoolExecutor(width, thread_name_prefix="evalkit-micro-batch")
        ready = threading.Barrier(width)

        def init() -> None:
            _worker.active = True
            # ATen initialises a thread's OpenMP setting lazily, from the process default, at
            # its first parallel op: do that now, then hold this thread to one (per thread
            # under OpenMP, and MKL's thread-local setting)
            torch.get_num_threads()
            torch.set_num_threads(1)
            ready.wait()  # every worker is started now, none later

        for future in [pool.submit(init) for _ in range(width)]:
            future.result()
        # set_num_threads also sets the default that threads started later inherit: restore it
        torch.set_num_threads(threads)
        _pools[width] = pool
        return pool


@contextlib.contextmanager
def single_threaded_ops(device: str | torch.device) -> Iterator[int]:
    """Hold this thread's CPU ops to one intra-op thread inside the block; yields :func:`worker_count`.

    For the arithmetic around a network (samplers, guidance, resizing) on the CPU, so that it
    too is independent of the thread count while the micro-batches run on the workers. On other
    devices, and nested inside another such block, it changes nothing.
    """
    workers = worker_count(device)
    if getattr(_worker, "held", None) is not None or workers <= 1:
        yield workers
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    _worker.held = workers
    try:
        yield workers
    finally:
        _worker.held = None
        torch.set_num_threads(threads)


def _run_in_worker(
    fn: Callable[..., T], args: tuple, grad: bool, inference: bool
) -> Callable[[], T]:
    def call() -> T:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(*args)

    return call


def map_one_thread(fn: Callable[..., T], calls: Sequence[tuple], workers: int) -> list[T]:
    """``[fn(*args) for args in calls]``, on ``workers`` one-thread workers when ``workers > 1``.

    The caller's grad and inference modes apply inside the workers.
    """
    if workers <= 1 or len(calls) == 0:
        return [fn(*args) for args in calls]
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    pool = _pool(workers)
    futures = [pool.submit(_run_in_worker(fn, args, grad, inference)) for args in calls]
    return [f.result() for f in futures]


# --------------------------------------------------------------------------- networks


def _cat(outputs: list[Any], where: list[slice]) -> Any:
    """Concatenate per-chunk outputs (a tensor or a tuple/list of tensors), real rows only."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat([o[: w.stop - w.start] for o, w in zip(outputs, where, strict=True)])
    if isinstance(first, (tuple, list)):
        return type(first)(_cat([o[k] for o in outputs], where) for k in range(len(first)))
    raise TypeError(f"a micro-batched network must return tensors, not {type(first).__name__}")


def run_in_micro_batches(
    fn: Callable[..., Any],
    *inputs: torch.Tensor | None,
    size: int,
    workers: int = 1,
) -> Any:
    """``fn(*inputs)`` computed on fixed-shape micro-batches of ``size`` rows.

    ``inputs`` share their first dimension (``None`` passes through); ``fn`` returns a tensor
    or a tuple/list of tensors with one row per input row. Chunks run on ``workers``
    one-thread workers (:func:`worker_count`), and the result is concatenated in order with
    the padded rows dropped.
    """
    present = [x for x in inputs if x is not None]
    if not present:
        raise ValueError("run_in_micro_batches needs at least one input tensor")
    n = len(present[0])
    if any(len(x) != n for x in present):
        raise ValueError(f"inputs have different numbers of rows: {[len(x) for x in present]}")
    if n == 0:
        raise ValueError("run_in_micro_batches got no rows")
    index = torch.arange(n)
    where, calls = [], []
    for rows, chunk in micro_batches(index, size):
        where.append(rows)
        calls.append(tuple(None if x is None else x[chunk.to(x.device)] for x in inputs))
    return _cat(map_one_thread(fn, calls, workers), where)


# --------------------------------------------------------------------------- streaming


class RowBuffer:
    """Collects rows (with a tag per row) and hands them on in complete micro-batches.

    ``consume(rows, tags)`` gets a multiple of ``size`` rows at a time (at least ``release``
    rows, so that several micro-batches can run at once), and whatever is left at
    :meth:`flush`. Chunk boundaries therefore sit at multiples of ``size`` from the start of
    the stream, whatever the sizes of the :meth:`add` calls. Rows of another trailing shape
    (another image size) flush the buffer first.
    """

    def __init__(
        self,
        size: int,
        consume: Callable[[torch.Tensor, list[Any]], None],
        release: int | None = None,
    ) -> None:
        self.size = check_micro_batch(size, "micro-batch size")
        self.release = max(self.size, release or self.size)
        self.consume = consume
        self._rows: list[torch.Tensor] = []
        self._tags: list[Any] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, rows: torch.Tensor, tags: Sequence[Any] | None = None) -> None:
        """Add rows (N, ...) with ``tags`` (N items, or None)."""
        tags = [None] * len(rows) if tags is None else list(tags)
        if len(tags) != len(rows):
            raise ValueError(f"{len(rows)} rows but {len(tags)} tags")
        if len(rows) == 0:
            return
        if self._rows and rows.shape[1:] != self._rows[0].shape[1:]:
            self.flush()
        self._rows.append(rows)
        self._tags += tags
        self._count += len(rows)
        if self._count >= self.release:
            self._hand_on(self._count - self._count % self.size)

    def flush(self) -> None:
        """Hand on every buffered row (the last micro-batch is padded by the consumer's network)."""
        if self._count:
            self._hand_on(self._count)

    def _hand_on(self, n: int) -> None:
        rows = torch.cat(self._rows) if len(self._rows) > 1 else self._rows[0]
        tags = self._tags
        rest, self._tags = rows[n:], tags[n:]
        self._rows = [rest] if len(rest) else []
        self._count = len(rest)
        self.consume(rows[:n], tags[:n])
