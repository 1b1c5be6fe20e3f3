"""Where the model runs: a thread of this process, or worker processes (one per GPU).

Both pools have one interface (`submit` an item with its prompt rows, take back `result`s), so
the indexing loop (`indexer.job.loop`) is the same whichever runs the model:

* `LocalPool`: the model on one thread of this process (a CPU run with one worker). The loop's
  database work then overlaps the model's, as torch releases the interpreter lock in its kernels.
* `WorkerPool`: `n` model processes fed by this one. Why processes on a GPU: the model side
  launches thousands of small kernels per pass from Python, and sharing the interpreter lock with
  the database work slowed it by a quarter (bench/item_profile.py --busy-thread); a DuckDB file
  admits one writer anyway. The processes start (and load the model) as soon as the pool is made,
  so their start-up overlaps the run's set-up here. This process never loads the model: the first
  worker ready reports what the run records of it (`Ready`), so an 8B model is never also held,
  loaded or hashed on the host.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from atlas.db.models import ModelInfo
from atlas.db.results import BatchResult
from atlas.db.workqueue import WorkItem
from atlas.errors import AtlasError
from indexer.job.attributor import Attributor, Rows, load_for_index, model_info, weights_dtype
from indexer.job.options import IndexOptions

READY, RESULT, ERROR = "ready", "result", "error"


@dataclass(frozen=True)
class Ready:
    """What a worker reports once its model is loaded: what the run records of the model, whether
    it is a masked LM, its pass size and how long it took to start."""

    model: ModelInfo
    masked: bool
    pass_size: int
    start_s: float

    @classmethod
    def of(cls, attributor: Attributor, t0: float) -> Ready:
        lm = attributor.lm
        return cls(model_info(lm), lm.adapter.is_masked_lm, attributor.cfg.batch_size, time.perf_counter() - t0)


class Pool(Protocol):
    n: int
    opts: IndexOptions
    pass_size: int | None
    starts: list[float]

    def ready(self) -> Ready:
        """The first worker's report, waiting for it (a worker's load error is raised here)."""

    def submit(self, item: WorkItem, rows: Rows) -> None: ...

    def result(self, timeout: float = 5.0) -> tuple[BatchResult, float] | None:
        """The next finished item and how long its worker sat idle before it; None on timeout."""

    def close(self) -> None: ...


def _serve(attributor_of: Any, tasks: Any, results: Any, index: int) -> None:
    """A worker's life: load, report ready, attribute what it is handed, report each result with the
    time it waited for it (the database side being slower). A user's error travels back as itself,
    any other as its traceback."""
    t0 = time.perf_counter()
    try:
        attributor = attributor_of()
        results.put((READY, index, Ready.of(attributor, t0)))
        t_idle = time.perf_counter()
        while (task := tasks.get()) is not None:
            waited = time.perf_counter() - t_idle
            results.put((RESULT, attributor.compute(*task), waited))
            t_idle = time.perf_counter()
    except AtlasError as exc:
        results.put((ERROR, index, exc))
    except BaseException:
        results.put((ERROR, index, traceback.format_exc()))


class _Queues:
    """The result side shared by both pools."""

    def __init__(self, n: int, opts: IndexOptions, tasks: Any, results: Any) -> None:
        self.n, self.opts, self.tasks, self.results = n, opts, tasks, results
        self.first: Ready | None = None
        self.starts: list[float] = []  # each worker's start-up seconds, as they report ready
        self.used = False

    @property
    def pass_size(self) -> int | None:
        """Prompts per pass of the first worker ready (None before one is)."""
        return self.first.pass_size if self.first else None

    def ready(self) -> Ready:
        while self.first is None:
            if self._take(5.0) not in (None, READY):
                raise RuntimeError("a result before any worker was ready")
        return self.first

    def submit(self, item: WorkItem, rows: Rows) -> None:
        self.used = True
        self.tasks.put((item, rows))

    def result(self, timeout: float = 5.0) -> tuple[BatchResult, float] | None:
        while (got := self._take(timeout)) == READY:
            pass
        return got

    def _take(self, timeout: float) -> tuple[BatchResult, float] | str | None:
        """One message: a result is returned, a worker's ready report recorded (READY is returned),
        an error raised; None when nothing came within `timeout`."""
        try:
            kind, payload, extra = self.results.get(timeout=timeout)
        except queue_mod.Empty:
            if not self.alive():
                raise AtlasError(
                    "every model worker died; committed batches are kept, run the same command again to resume"
                ) from None
            return None
        if kind == ERROR:
            raise extra if isinstance(extra, AtlasError) else AtlasError(f"model worker {payload} failed:\n{extra}")
        if kind == RESULT:
            return payload, extra
        self.first = self.first or extra
        self.starts.append(extra.start_s)
        return READY

    def alive(self) -> bool:
        raise NotImplementedError


class LocalPool(_Queues):
    """The model on one thread of this process."""

    def __init__(self, attributor: Attributor) -> None:
        super().__init__(1, attributor.opts, queue_mod.Queue(), queue_mod.Queue())
        self.thread = threading.Thread(
            target=_serve, args=(lambda: attributor, self.tasks, self.results, 0), daemon=True, name="atlas-model"
        )
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def close(self) -> None:
        """Stop the model thread once it is idle (after an error it may still be busy: it is a
        daemon and holds nothing the database needs)."""
        self.tasks.put(None)
        self.thread.join(timeout=1)


class WorkerPool(_Queues):
    """`n` model processes, worker i pinned to the i-th visible GPU on a GPU run."""

    def __init__(self, opts: IndexOptions, n: int) -> None:
        ctx = mp.get_context("spawn")
        super().__init__(n, opts, ctx.Queue(), ctx.Queue())
        self.procs = [
            ctx.Process(target=_worker_main, args=(i, n, opts, self.tasks, self.results), daemon=True) for i in range(n)
        ]
        _start_pinned(self.procs, opts)

    def alive(self) -> bool:
        return any(p.is_alive() for p in self.procs)

    def close(self) -> None:
        """Stop the workers (at once when they were never used: nothing of theirs to finish)."""
        for _ in self.procs:
            self.tasks.put(None)
        for p in self.procs:
            p.join(timeout=10 if self.used else 0)
            if p.is_alive():
                p.kill()


def _worker_main(index: int, n: int, opts: IndexOptions, tasks: Any, results: Any) -> None:
    """A worker process. Inside a pinned worker the one visible GPU is `cuda`. A CPU worker gets
    its share of the cores (N processes each spinning up one OpenMP thread per core oversubscribe
    the CPU); a GPU worker gets two, as its host-side work is small and idle OpenMP threads spin
    on cores the writer needs."""
    cuda = opts.on_gpu()
    torch.set_num_threads(2 if cuda else max(1, (os.cpu_count() or 1) // n))
    device = "cuda" if cuda else opts.device
    _serve(lambda: Attributor(load_for_index(opts.model, device, weights_dtype(opts)), opts), tasks, results, index)


def _start_pinned(procs: list[Any], opts: IndexOptions) -> None:
    """Start worker i with CUDA_VISIBLE_DEVICES naming only the i-th visible GPU.

    The variable must be in the child's environment when it starts: setting it inside the child
    is too late, because importing transformers already asks torch about CUDA, which fixes the
    visible devices for the life of the process (both workers then share GPU 0).
    """
    if not opts.on_gpu():
        for p in procs:
            p.start()
        return
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = before.split(",") if before else [str(i) for i in range(torch.cuda.device_count())]
    try:
        for i, p in enumerate(procs):
            os.environ["CUDA_VISIBLE_DEVICES"] = visible[i % len(visible)]
            p.start()
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before
