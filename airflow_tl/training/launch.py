"""Start work in several processes (training, on one machine or many; extraction), with torch's elastic launcher.

The launcher is torchrun's own (``torch.distributed.launcher.api.elastic_launch``): an agent in the task's
process starts ``nproc`` workers, joins the other machines' agents in a c10d rendezvous, watches the workers and
stops them all when one fails. No restarts inside the task (``max_restarts=0``): Airflow's retry is the restart,
and it resumes from the last checkpoint.

What a failure becomes, since the workers' exceptions do not cross the process boundary by themselves: each
worker records its error (class and message, as JSON) before dying, and the launcher raises it again here,
naming the rank. Our permanent errors (bad data, bad arguments) stay permanent, so the task fails at once; a
worker that died without a word (SIGKILL, out of memory) or a rendezvous that did not complete are worth a retry.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_tl.exceptions import AirflowTLError, InvalidArgumentError, PermanentError

log = logging.getLogger(__name__)

# How long a rank waits in one collective (a gradient all-reduce, the barrier after the model is written)
# before failing: long enough for rank 0 to write a checkpoint or a large model while the others wait.
COLLECTIVE_TIMEOUT_S = 1800.0


class TrainingProcessError(AirflowTLError):
    """A training process died without raising (killed, out of memory) or failed in a way a retry may fix."""


class RendezvousFailedError(AirflowTLError):
    """The training processes of every node did not meet within the rendezvous timeout."""


@dataclass(frozen=True)
class Nodes:
    """Several machines (Airflow task instances) training as one: ``count`` of them meet at ``endpoint``.

    ``endpoint`` is ``host:port`` of a machine every node reaches; the node running there hosts the rendezvous
    store (torch's c10d backend). ``timeout_s`` bounds the wait for all nodes: a node that never starts fails the
    others after it, and nothing is published. ``run_id`` names this training among others at the endpoint.
    """

    count: int = 1
    endpoint: str | None = None
    timeout_s: float = 300.0
    run_id: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or isinstance(self.count, bool) or self.count < 1:
            raise InvalidArgumentError(f"Argument nnodes must be a positive integer. Provided value: {self.count!r}.")
        if self.count > 1 and not self.endpoint:
            raise InvalidArgumentError(
                f"nnodes={self.count} needs rdzv_endpoint: the host:port where the nodes meet (one of them)."
            )
        if not isinstance(self.timeout_s, int | float) or self.timeout_s <= 0:
            raise InvalidArgumentError(
                f"Argument rdzv_timeout must be a positive number of seconds. Provided value: {self.timeout_s!r}."
            )


@dataclass(frozen=True)
class Job:
    """What every worker runs: ``target(world=..., store=..., **kwargs)``, with the store each builds itself."""

    target: Callable[..., Any]
    kwargs: dict[str, Any]
    store_factory: Callable[[], Any]
    backend: str
    errors: str  # a folder where failing ranks record why
    log_level: int = logging.INFO


def launch(job: Job, *, num_processes: int, nodes: Nodes = Nodes()) -> dict[int, Any]:
    """Run ``job`` in ``num_processes`` processes here, joined with ``nodes.count - 1`` other machines' processes.

    Returns the local workers' results by global rank. Raises the first meaningful failure (see module doc).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    single = nodes.count == 1
    config = LaunchConfig(
        min_nodes=nodes.count,
        max_nodes=nodes.count,
        nproc_per_node=num_processes,
        run_id=nodes.run_id or f"airflow-tl-{os.getpid()}-{time.time_ns()}",
        rdzv_backend="c10d",
        # One machine: a store on a free loopback port, as torchrun --standalone does.
        rdzv_endpoint="127.0.0.1:0" if single else nodes.endpoint,
        rdzv_configs={"join_timeout": int(nodes.timeout_s)},
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",  # a fresh interpreter: no forked S3 clients, threads or CUDA state
    )
    where = "on this machine" if single else f"here, of {nodes.count} nodes meeting at {nodes.endpoint}"
    log.info("Starting %d process%s %s (%s)", num_processes, "es" if num_processes > 1 else "", where, job.backend)
    # torch's agent logs its whole launch configuration at INFO; the line above says what matters.
    for name in ("torch.distributed.elastic", "torchelastic-events-null"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with _as_library():
            return elastic_launch(config, _worker)(job)
    except ChildFailedError as err:
        raise explain(err.failures, Path(job.errors), num_processes * nodes.count) from None
    except RendezvousError as err:
        raise RendezvousFailedError(
            f"The training processes of {nodes.count} node(s) did not all meet at "
            f"{config.rdzv_endpoint} within {nodes.timeout_s:g} s ({type(err).__name__}: {err}). Every node "
            "stops, and nothing is published; check that each node's task started and reaches the endpoint."
        ) from None


@contextlib.contextmanager
def _as_library() -> Iterator[None]:
    """Workers start as fresh interpreters that import Airflow (our errors derive from its exceptions). In a
    task process Airflow's supervisor has blocked the metadata database with an unusable ``sql_alchemy_conn``,
    which a fresh ``import airflow`` would try to configure, and fail on. Workers need no database: they import
    Airflow as a library, as ``_AIRFLOW__AS_LIBRARY`` tells it to, without configuring one."""
    saved = os.environ.get("_AIRFLOW__AS_LIBRARY")
    os.environ["_AIRFLOW__AS_LIBRARY"] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["_AIRFLOW__AS_LIBRARY"]
        else:
            os.environ["_AIRFLOW__AS_LIBRARY"] = saved


def explain(failures: dict[int, Any], errors: Path, world_size: int) -> Exception:
    """The error to raise for failed workers: ``failures`` is torch's ProcessFailure by global rank.

    Preferred, in order: an airflow-tl error a rank raised (the cause: bad data, divergence...); a rank that died
    by a signal the launcher did not send (SIGKILL, a crash); any other recorded error. Ranks stopped because
    another failed, and ranks whose collective broke when a peer died, are consequences, not causes.
    """
    recorded = sorted(_recorded(errors), key=lambda r: r["time"])
    ours = [r for r in recorded if r["module"].startswith("airflow_tl.")]
    if ours:
        return _rebuild(ours[0], world_size)
    for rank, failure in sorted(failures.items()):
        if failure.exitcode < 0 and -failure.exitcode != signal.SIGTERM:
            name = signal.Signals(-failure.exitcode).name
            return TrainingProcessError(
                f"Training process rank {rank} of {world_size} (pid {failure.pid}) was killed by {name}; the others "
                "were stopped. Nothing was published: a retry resumes from the last checkpoint. (Out of memory is "
                "the usual cause of a SIGKILL nobody sent.)"
            )
    if recorded:
        return _rebuild(recorded[0], world_size)
    rank, failure = next(
        ((r, f) for r, f in sorted(failures.items()) if f.exitcode != -signal.SIGTERM), min(failures.items())
    )
    return TrainingProcessError(
        f"Training process rank {rank} of {world_size} (pid {failure.pid}) exited with code {failure.exitcode}; "
        "the others were stopped. Nothing was published."
    )


def _recorded(errors: Path) -> list[dict[str, Any]]:
    found = []
    for path in errors.glob("rank-*.json"):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a rank killed while writing: its death is reported otherwise
    return found


def _rebuild(record: dict[str, Any], world_size: int) -> Exception:
    """The rank's exception again, as its own class when it is one of ours (so permanent stays permanent)."""
    message = f"Training process rank {record['rank']} of {world_size} failed: {record['message']}"
    if record["module"].startswith("airflow_tl."):
        try:
            cls = getattr(importlib.import_module(record["module"]), record["type"])
            if isinstance(cls, type) and issubclass(cls, AirflowTLError):
                return cls(message)
        except (ImportError, AttributeError, TypeError):
            pass
    if record["permanent"]:
        return PermanentError(f"{message} ({record['type']})")
    return TrainingProcessError(f"{message} ({record['type']})")


def _worker(job: Job) -> Any:
    """One training process: join the group, build the store, run the target, record why if it fails."""
    from airflow_tl.training.distributed import World

    rank = int(os.environ["RANK"])
    _log_to_stderr(rank, job.log_level)
    _share_cores(int(os.environ["LOCAL_WORLD_SIZE"]))
    if job.backend == "nccl":  # NCCL's collectives run on the current GPU: this rank's own
        import torch

        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    world = World.joined(job.backend, COLLECTIVE_TIMEOUT_S)
    try:
        return job.target(world=world, store=job.store_factory(), **job.kwargs)
    except BaseException as err:
        _record(Path(job.errors), rank, err)
        raise
    finally:
        World.leave()


def _record(errors: Path, rank: int, err: BaseException) -> None:
    cls = type(err)
    record = {
        "rank": rank,
        "module": cls.__module__,
        "type": cls.__qualname__,
        "message": str(err),
        "permanent": isinstance(err, PermanentError),
        "time": time.time(),
    }
    path = errors / f"rank-{rank}.json"
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(record))
    partial.replace(path)  # whole or absent: the launcher may read while this rank dies


def _log_to_stderr(rank: int, level: int) -> None:
    """The worker's log lines go to the task's stderr (which the task log shows), tagged with the rank. Rank 0
    says what one process would; the others speak up only with warnings, so the log is not said N times."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level if rank == 0 else max(level, logging.WARNING), handlers=[handler], force=True)


def _share_cores(local_processes: int) -> None:
    """Each of the machine's training processes gets its share of the cores, as torchrun arranges: n processes
    with a thread per core each would oversubscribe the CPU n times. An explicit OMP_NUM_THREADS wins."""
    if "OMP_NUM_THREADS" in os.environ or local_processes < 2:
        return
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_processes))


def errors_folder() -> tempfile.TemporaryDirectory:
    """Where the workers of one launch record their errors; removed after it."""
    return tempfile.TemporaryDirectory(prefix="airflow-tl-ranks-")
