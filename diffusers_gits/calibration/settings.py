"""Calibration settings: validated once, before any model call, and the one source of the cache key's, the
checkpoint's, the metadata's and the model card's fields."""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from types import SimpleNamespace
from typing import Any, Literal, get_args

import numpy as np

from ..schedules import check_step_count
from ..solvers import SOLVERS, SolverName
from .search import METRICS, Metric, check_arrivals_per_node


TeacherName = Literal["dpmpp_2m", "ipndm"]
TEACHERS = get_args(TeacherName)
JumpCost = Literal["student", "euler", "solver"]
JUMP_COSTS = get_args(JumpCost)
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


def student_search_calls(steps: Sequence[int], grid_size: int, num_search: int, arrivals_per_node: int = 1) -> int:
    """Model calls of `student_path_dp` through a pipeline: for each layer k = 1..max(steps) - 1 and rank r of arrival,
    every node with r + 1 arrivals (layer 1 has one path into each node; in a later layer node j has j - k + 1),
    plus the one throw-away call per pipeline pass that moves it onto the injected states (layer 0 reuses the
    teacher's)."""
    per_noise = sum(
        grid_size - k - rank + 1
        for k in range(1, max(steps))
        for rank in range(arrivals_per_node if k > 1 else 1)
        if grid_size - k - rank > 0
    )
    return per_noise * num_search


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
    solver: SolverName
    teacher: TeacherName
    grid_size: int
    jump_cost: JumpCost
    arrivals_per_node: int
    num_search: int
    num_holdout: int
    budget: float
    confidence: float
    require_confidence: bool
    metric: Metric
    coeff: float | str | None
    refine: bool
    hedge: float
    seed: int
    pipe_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The options `calibrate` takes by keyword that these settings hold: every field but `steps` and
        `pipe_kwargs`. `calibrate`'s signature declares them with their defaults; nothing else lists them."""
        return tuple(f.name for f in fields(cls) if f.name not in ("steps", "pipe_kwargs"))

    @classmethod
    def create(
        cls, num_inference_steps: int | Sequence[int], pipe_kwargs: dict[str, Any] | None = None, **options: Any
    ) -> "CalibrationSettings":
        """Validate the calibration options and fill in the defaults that depend on the others (`num_search`,
        `num_holdout`, `coeff`, `solver`).

        Args:
            num_inference_steps: as `calibrate`'s.
            pipe_kwargs: the keyword arguments passed to every pipeline call.
            **options: each of `option_names()`, meaning what `calibrate`'s argument of the name means.

        Raises:
            TypeError: an option missing or unknown.
            ValueError: naming the bad value and what is allowed.
        """
        names = set(cls.option_names())
        if set(options) != names:
            raise TypeError(
                f"calibration options: missing {sorted(names - set(options))}, unknown {sorted(set(options) - names)}"
            )
        o = SimpleNamespace(**options)
        pipe_kwargs = dict(pipe_kwargs or {})
        steps = _check_steps(num_inference_steps, o.grid_size)
        o.solver = DEFAULT_SOLVER if o.solver is None else o.solver  # `calibrate` picks UniPC for Wan-style pipelines
        if o.solver not in SOLVERS:
            raise ValueError(f"solver {o.solver!r} is not supported; choose one of {sorted(SOLVERS)}")
        if o.teacher not in TEACHERS:
            raise ValueError(f"teacher {o.teacher!r} is not supported; choose one of {TEACHERS}")
        if o.jump_cost not in JUMP_COSTS:
            raise ValueError(f"jump_cost {o.jump_cost!r} is not supported; choose one of {JUMP_COSTS}")
        if o.metric not in METRICS:
            raise ValueError(f"metric {o.metric!r} is not supported; choose one of {METRICS}")
        if o.metric != "l2" and o.jump_cost != "euler":
            raise ValueError(
                f"metric={o.metric!r} needs jump_cost='euler'; jump_cost={o.jump_cost!r} measures l2 only"
            )
        check_arrivals_per_node(o.arrivals_per_node)
        if o.arrivals_per_node != 1 and o.jump_cost != "student":
            raise ValueError(
                f"arrivals_per_node={o.arrivals_per_node} is for the student search; jump_cost={o.jump_cost!r} keeps "
                "no arrivals (leave it at 1)"
            )
        if o.jump_cost == "student":
            if o.coeff is not None:
                raise ValueError(
                    f"coeff={o.coeff!r} weights teacher-priced jumps; pass jump_cost='euler' or 'solver' to use it "
                    "(jump_cost='student' measures the final error itself)"
                )
        elif o.coeff is None:
            o.coeff = "auto"
        elif o.coeff != "auto" and (isinstance(o.coeff, (str, bool)) or not o.coeff > 0):
            raise ValueError(f"coeff must be a positive number or 'auto', got {o.coeff!r}")
        if o.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {o.batch_size}")
        if not 1 <= o.num_warmup <= MAX_WARMUP:
            raise ValueError(f"num_warmup must be in 1..{MAX_WARMUP:,}, got {o.num_warmup}")
        if not 0 < o.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {o.confidence}")
        if o.num_search is None:
            if o.jump_cost == "student":
                # The search costs about max(steps) x grid_size calls per noise: give it half the budget, so that the
                # race keeps the other half, and never more noises than 32 or half the warm-ups.
                per_noise = 2 * o.grid_size + student_search_calls(steps, o.grid_size, 1, o.arrivals_per_node)
                affordable = int(o.budget * o.num_warmup * o.grid_size / 2 / per_noise)
                o.num_search = max(1, min(32, o.num_warmup // 2, affordable))
            elif o.num_holdout is not None:
                o.num_search = o.num_warmup - o.num_holdout
            else:
                o.num_search = max(1, o.num_warmup * 3 // 4)
        if not 1 <= o.num_search <= o.num_warmup:
            raise ValueError(f"num_search must be in 1..{o.num_warmup} (num_warmup), got {o.num_search}")
        if o.num_holdout is None:
            o.num_holdout = o.num_warmup - o.num_search
        if not 0 <= o.num_holdout <= o.num_warmup - o.num_search:
            raise ValueError(
                f"num_holdout must be in 0..{o.num_warmup - o.num_search} (num_warmup - num_search), "
                f"got {o.num_holdout}"
            )
        if o.num_holdout == 0 and (o.refine or o.coeff == "auto"):
            raise ValueError(
                "refine=True and coeff='auto' choose on held-out noises; leave num_holdout > 0 (num_search < num_warmup)"
            )
        if isinstance(o.hedge, bool) or not isinstance(o.hedge, (int, float)) or not 0 <= o.hedge < 1:
            raise ValueError(f"hedge must be a number in [0, 1) (0: off), got {o.hedge!r}")
        if o.hedge and o.num_holdout == 0:
            raise ValueError(
                f"hedge={o.hedge} moves a searched schedule that the held-out race did not confirm toward the race's "
                "best baseline: it needs num_holdout > 0"
            )
        if not o.budget > 0:
            raise ValueError(f"budget must be > 0, got {o.budget}")
        limit = int(o.budget * o.num_warmup * o.grid_size)
        needed = o.num_search * (2 * o.grid_size if o.jump_cost == "student" else o.grid_size)
        if o.jump_cost == "student":
            needed += student_search_calls(steps, o.grid_size, o.num_search, o.arrivals_per_node)
        if needed > limit:
            raise ValueError(
                f"budget={o.budget} allows {limit} model calls ({o.budget} x num_warmup {o.num_warmup} x grid_size "
                f"{o.grid_size}), but the teacher and search alone need {needed}; raise budget or num_warmup, or lower "
                "num_search or the largest step count"
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
        o.prompts = tuple(o.prompts or ())
        o.coeff = o.coeff if o.coeff in (None, "auto") else float(o.coeff)
        for f in fields(cls):  # plain Python values of the declared types (numpy ints, 0/1 flags, ...)
            if f.type in (int, float, bool):
                setattr(o, f.name, f.type(getattr(o, f.name)))
        return cls(steps=tuple(steps), pipe_kwargs=pipe_kwargs, **vars(o))

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
