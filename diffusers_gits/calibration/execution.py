"""Running a calibration's pipeline calls: split over accelerate's processes, checkpointed, counted and shown.

A calibration is a sequence of `Executor.map` calls, each over a list of jobs (one pipeline call on one batch of
warm-up noises each). Every process builds the same list, runs its share, and gets every result back in list order
(`accelerate.utils.gather_object`), so every process takes the same decisions and ends with the same schedules. A
job's result depends only on its batch, never on which process ran it or on how many there are, so the schedules do
not depend on the process count. A job whose result a checkpoint holds is not run again: rerunning an interrupted
calibration replays its decisions on the stored results and continues where it stopped.
"""

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from tqdm.auto import tqdm

from ..errors import CheckpointMismatchError
from .checkpoint import CalibrationCheckpoint


@dataclass
class Job:
    """One pipeline call.

    Attributes:
        key: names the job within its calibration (the same in every run with the same settings): the checkpoint
            stores its result under it.
        calls: the model calls it makes (samples x steps): the budget, progress and load balancing.
        samples: the warm-up noises it runs.
        run: makes the call and returns a picklable result (CPU tensors).
        spend_as: the budget stage its calls are charged to; `None` for the stage of the `Executor.map` call.
    """

    key: str
    calls: int
    samples: int
    run: Callable[[], Any]
    spend_as: str | None = None


class CallBudget:
    """Model calls (one sample through the denoiser at one noise level) allowed and spent, stage by stage."""

    def __init__(self, limit: int):
        self.limit = limit
        self.spent: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.spent.values())

    @property
    def remaining(self) -> int:
        return self.limit - self.total

    def spend(self, stage: str, calls: int) -> None:
        self.spent[stage] = self.spent.get(stage, 0) + calls


class Progress:
    """One bar for a whole calibration, on the main process only: model calls made out of the most the budget allows
    (so its time remaining is an upper bound), the stage, and the warm-up samples run in it."""

    def __init__(self, total_calls: int, enabled: bool):
        self.bar = tqdm(total=total_calls, unit="call", unit_scale=True, desc="GITS calibration", disable=not enabled)
        self.stage = None
        self.samples = 0

    def update(self, stage: str, calls: int, samples: int) -> None:
        if stage != self.stage:
            self.stage, self.samples = stage, 0
            self.bar.set_description(f"GITS {stage}")
        self.samples += samples
        self.bar.set_postfix_str(f"{self.samples} samples", refresh=False)
        self.bar.update(calls)

    def finish(self) -> None:
        """Show the calibration as done: a calibration that stops under its budget fills the bar to its own calls."""
        if not self.bar.disable:
            self.bar.total = self.bar.n
            self.bar.set_description("GITS calibration done", refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class Executor:
    """Runs `Job` lists over the processes of `state`, with an optional checkpoint and progress bar.

    Args:
        state: accelerate's `PartialState` (one process when not launched with `accelerate launch` / `torchrun`).
        checkpoint: where finished jobs are stored and looked up; `None` to keep nothing.
        progress: the bar to advance; `None` for none.
        budget: where every job's model calls are counted (the one count; on every process alike, so that all of
            them take the same budget decisions); unlimited when `None`.
    """

    def __init__(
        self,
        state: PartialState,
        checkpoint: CalibrationCheckpoint | None = None,
        progress: Progress | None = None,
        budget: CallBudget | None = None,
    ):
        self.state = state
        self.checkpoint = checkpoint
        self.progress = progress
        self.budget = budget if budget is not None else CallBudget(sys.maxsize)
        self.stored: dict[str, Any] = {}
        if checkpoint is not None:
            # The main process reads the checkpoint and hands its results to every process: they must agree on which
            # jobs are done, and the others may not see the main process's disk.
            loaded = None
            if self.state.is_main_process:
                try:
                    loaded = checkpoint.load()
                except CheckpointMismatchError as error:
                    loaded = error
            loaded = broadcast(self.state, loaded)
            if isinstance(loaded, CheckpointMismatchError):
                raise loaded
            self.stored = loaded

    @property
    def num_processes(self) -> int:
        return self.state.num_processes

    def map(self, stage: str, jobs: Sequence[Job]) -> list[Any]:
        """Every job's result, in order, on every process; jobs a checkpoint holds are not run again (their calls
        are counted all the same: the budget is the calibration's, whichever run made them)."""
        if len({job.key for job in jobs}) != len(jobs):
            raise ValueError(f"job keys repeat within one map call of stage {stage!r}")
        results = {i: self.stored[job.key] for i, job in enumerate(jobs) if job.key in self.stored}
        for i in results:
            self._advance(stage, jobs[i])
        todo = [i for i in range(len(jobs)) if i not in results]
        mine = []
        for i in _share(todo, [jobs[i].calls for i in todo], self.num_processes)[self.state.process_index]:
            result = jobs[i].run()
            if self.checkpoint is not None:
                self.checkpoint.store(jobs[i].key, result)
            mine.append((i, result))
            self._advance(stage, jobs[i])
        if self.num_processes > 1:
            own = {i for i, _ in mine}
            others = [(i, result) for i, result in gather_object(mine) if i not in own]
            for i, _ in others:
                self._advance(stage, jobs[i])
            mine += others
        results.update(mine)
        return [results[i] for i in range(len(jobs))]

    def _advance(self, stage: str, job: Job) -> None:
        """Count a finished job (run here, on another process, or stored by the checkpoint)."""
        self.budget.spend(job.spend_as or stage, job.calls)
        if self.progress is not None:  # enabled on the main process only
            self.progress.update(stage, job.calls, job.samples)


def process_state(device: str | torch.device) -> PartialState:
    """accelerate's process state for a pipeline on `device`: under `accelerate launch` or `torchrun` the processes
    join (over gloo when the pipelines are on CPU), otherwise it is one process."""
    return PartialState(cpu=torch.device(device).type == "cpu")


def broadcast(state: PartialState, value: Any) -> Any:
    """The main process's `value`, on every process."""
    if state.num_processes == 1:
        return value
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _share(todo: list[int], costs: list[int], num_processes: int) -> list[list[int]]:
    """`todo` split over the processes by cost: the costliest job first to the least loaded process.

    A race round mixes teacher references (121 calls a sample) with student samples (5-10 calls a sample), so equal
    job counts (`split_between_processes`) would leave most processes idle. The split only decides who runs a job,
    never its result.
    """
    shares: list[list[int]] = [[] for _ in range(num_processes)]
    loads = [0] * num_processes
    for cost, i in sorted(zip(costs, todo), key=lambda pair: (-pair[0], pair[1])):
        p = loads.index(min(loads))
        shares[p].append(i)
        loads[p] += cost
    return [sorted(share) for share in shares]
