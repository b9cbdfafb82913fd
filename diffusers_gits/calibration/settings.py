"""Calibration settings: validated once, before any model call, and the one source of the cache key's, the
checkpoint's, the metadata's and the model card's fields."""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..schedules import check_step_count
from ..solvers import SOLVERS
from .search import METRICS


TEACHERS = ("dpmpp_2m", "ipndm")
JUMP_COSTS = ("student", "euler", "solver")
#: Keys of the pipeline call that calibration sets itself.
RESERVED_KWARGS = (
    "prompt",
    "num_inference_steps",
    "generator",
    "batch_size",
    "num_images_per_prompt",
    "num_videos_per_prompt",
    "output_type",
    "sigmas",
    "timesteps",
)
#: Warm-up noises are indices 0 .. num_warmup - 1 of the seed's noise stream (`recorder.noise_seed`); the benchmarks'
#: and `compare`'s test noises start at 10^6 and 2^31, so they never meet a calibration's.
MAX_WARMUP = 1_000_000
#: The solver schedules are calibrated for when none is named (and the pipeline ships no UniPC with flow sigmas).
DEFAULT_SOLVER = "dpmpp_2m"
#: The call arguments that set how many samples a pipeline makes per prompt (images, or videos for Wan-style ones).
PER_PROMPT_COUNTS = ("num_images_per_prompt", "num_videos_per_prompt")
#: Settings that change how the work is cut into pipeline calls but not what it computes (up to float rounding).
EXECUTION_FIELDS = ("batch_size",)


def student_search_calls(steps: Sequence[int], grid_size: int, num_search: int) -> int:
    """Model calls of `student_path_dp` through a pipeline: every node of layers 1..max(steps) - 1, plus the one
    throw-away call per layer that moves the pipeline onto the injected states (layer 0 reuses the teacher's)."""
    return sum(grid_size - k + 1 for k in range(1, max(steps))) * num_search


@dataclass(frozen=True)
class CalibrationSettings:
    """Everything a calibration's result depends on besides the pipeline, with defaults filled in.

    Build it with [`CalibrationSettings.create`], which validates every value; the fields mean what the arguments of
    [`diffusers_gits.calibration.calibrate`] of the same names mean.
    """

    steps: tuple[int, ...]
    prompts: tuple[str, ...]
    num_warmup: int
    batch_size: int
    solver: str
    teacher: str
    grid_size: int
    jump_cost: str
    num_search: int
    num_holdout: int
    budget: float
    confidence: float
    require_confidence: bool
    metric: str
    coeff: float | str | None
    refine: bool
    seed: int
    pipe_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        num_inference_steps: int | Sequence[int],
        *,
        prompts: Sequence[str] | None,
        num_warmup: int,
        batch_size: int,
        solver: str | None,
        teacher: str,
        grid_size: int,
        jump_cost: str,
        num_search: int | None,
        budget: float,
        confidence: float,
        require_confidence: bool,
        metric: str,
        coeff: float | str | None,
        refine: bool,
        num_holdout: int | None,
        seed: int,
        pipe_kwargs: dict[str, Any],
    ) -> "CalibrationSettings":
        """Validate the calibration options and fill in the defaults that depend on the others (`num_search`,
        `num_holdout`, `coeff`); the other defaults are `calibrate`'s, the public signature.

        Raises:
            ValueError: naming the bad value and what is allowed.
        """
        pipe_kwargs = dict(pipe_kwargs)
        steps = _check_steps(num_inference_steps, grid_size)
        solver = DEFAULT_SOLVER if solver is None else solver  # `calibrate` picks UniPC for Wan-style pipelines
        if solver not in SOLVERS:
            raise ValueError(f"solver {solver!r} is not supported; choose one of {sorted(SOLVERS)}")
        if teacher not in TEACHERS:
            raise ValueError(f"teacher {teacher!r} is not supported; choose one of {TEACHERS}")
        if jump_cost not in JUMP_COSTS:
            raise ValueError(f"jump_cost {jump_cost!r} is not supported; choose one of {JUMP_COSTS}")
        if metric not in METRICS:
            raise ValueError(f"metric {metric!r} is not supported; choose one of {METRICS}")
        if metric != "l2" and jump_cost != "euler":
            raise ValueError(f"metric={metric!r} needs jump_cost='euler'; jump_cost={jump_cost!r} measures l2 only")
        if jump_cost == "student":
            if coeff is not None:
                raise ValueError(
                    f"coeff={coeff!r} weights teacher-priced jumps; pass jump_cost='euler' or 'solver' to use it "
                    "(jump_cost='student' measures the final error itself)"
                )
        elif coeff is None:
            coeff = "auto"
        elif coeff != "auto" and (isinstance(coeff, (str, bool)) or not coeff > 0):
            raise ValueError(f"coeff must be a positive number or 'auto', got {coeff!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 1 <= num_warmup <= MAX_WARMUP:
            raise ValueError(f"num_warmup must be in 1..{MAX_WARMUP:,}, got {num_warmup}")
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        if num_search is None:
            if jump_cost == "student":
                # The search costs about max(steps) x grid_size calls per noise: give it half the budget, so that the
                # race keeps the other half, and never more noises than 32 or half the warm-ups.
                per_noise = 2 * grid_size + student_search_calls(steps, grid_size, 1)
                num_search = max(1, min(32, num_warmup // 2, int(budget * num_warmup * grid_size / 2 / per_noise)))
            elif num_holdout is not None:
                num_search = num_warmup - num_holdout
            else:
                num_search = max(1, num_warmup * 3 // 4)
        if not 1 <= num_search <= num_warmup:
            raise ValueError(f"num_search must be in 1..{num_warmup} (num_warmup), got {num_search}")
        if num_holdout is None:
            num_holdout = num_warmup - num_search
        if not 0 <= num_holdout <= num_warmup - num_search:
            raise ValueError(
                f"num_holdout must be in 0..{num_warmup - num_search} (num_warmup - num_search), got {num_holdout}"
            )
        if num_holdout == 0 and (refine or coeff == "auto"):
            raise ValueError(
                "refine=True and coeff='auto' choose on held-out noises; leave num_holdout > 0 (num_search < num_warmup)"
            )
        if not budget > 0:
            raise ValueError(f"budget must be > 0, got {budget}")
        limit = int(budget * num_warmup * grid_size)
        needed = num_search * (2 * grid_size if jump_cost == "student" else grid_size)
        if jump_cost == "student":
            needed += student_search_calls(steps, grid_size, num_search)
        if needed > limit:
            raise ValueError(
                f"budget={budget} allows {limit} model calls ({budget} x num_warmup {num_warmup} x grid_size {grid_size}), "
                f"but the teacher and search alone need {needed}; raise budget or num_warmup, or lower num_search or "
                "the largest step count"
            )
        reserved = sorted(set(pipe_kwargs) & set(RESERVED_KWARGS))
        if reserved:
            raise ValueError(
                f"calibration sets {reserved} itself; pass prompts=, num_inference_steps= and seed= instead"
            )
        embeds = pipe_kwargs.get("prompt_embeds")
        if embeds is not None and len(embeds) != 1:
            raise ValueError(
                "prompt_embeds must hold one prompt (batch 1; the warm-up noises are its images), "
                f"got batch {len(embeds)}"
            )
        return cls(
            steps=tuple(steps),
            prompts=tuple(prompts or ()),
            num_warmup=int(num_warmup),
            batch_size=int(batch_size),
            solver=solver,
            teacher=teacher,
            grid_size=int(grid_size),
            jump_cost=jump_cost,
            num_search=int(num_search),
            num_holdout=int(num_holdout),
            budget=float(budget),
            confidence=float(confidence),
            require_confidence=bool(require_confidence),
            metric=metric,
            coeff=coeff if coeff in (None, "auto") else float(coeff),
            refine=bool(refine),
            seed=int(seed),
            pipe_kwargs=pipe_kwargs,
        )

    @property
    def call_limit(self) -> int:
        """The most model calls the calibration may make: `budget` x one GITS teacher run over the warm-ups."""
        return int(self.budget * self.num_warmup * self.grid_size)

    def result_fields(self) -> dict[str, Any]:
        """The settings the result depends on (the cache key's part): all but how the work is batched."""
        fields = asdict(self)
        for name in EXECUTION_FIELDS:
            del fields[name]
        fields["steps"] = list(self.steps)
        fields["prompts"] = list(self.prompts)
        return fields

    def checkpoint_fields(self) -> dict[str, Any]:
        """The settings a checkpoint must match to be resumed: the result's, and the batching, which fixes what each
        stored pipeline call holds (the number of processes does not: any count resumes any checkpoint)."""
        return {**self.result_fields(), **{name: getattr(self, name) for name in EXECUTION_FIELDS}}

    def metadata(self) -> dict[str, Any]:
        """The settings as the calibration metadata records them (plain JSON values; tensors such as
        `prompt_embeds` are left out of `pipe_kwargs`)."""
        fields = self.result_fields()
        del fields["prompts"], fields["steps"]
        fields["num_prompts"] = len(self.prompts)
        fields["pipe_kwargs"] = {
            k: v for k, v in self.pipe_kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))
        }
        fields["grid"] = {"size": self.grid_size}
        del fields["grid_size"]
        return fields


def _check_steps(num_inference_steps: int | Sequence[int], grid_size: int) -> list[int]:
    steps = [num_inference_steps] if isinstance(num_inference_steps, (int, np.integer)) else list(num_inference_steps)
    if not steps:
        raise ValueError("num_inference_steps is empty; pass step counts such as [5, 6, 8, 10]")
    for k in steps:
        check_step_count(k, "each of num_inference_steps")
        if k > grid_size:
            raise ValueError(
                f"num_inference_steps {k} is larger than the grid allows (grid_size={grid_size}); raise grid_size"
            )
    return sorted({int(k) for k in steps})
