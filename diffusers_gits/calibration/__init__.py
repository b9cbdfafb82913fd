"""The calibration: runs a pipeline to find GITS schedules for it (`calibrate`, behind `from_calibration`).

Its parts, each one job: `settings` (the options, checked), `recorder` (runs the pipeline and records trajectories),
`execution` (batches, the call budget, processes), `checkpoint` (resumable state), `families` (VP or flow: grids,
baselines, defaults), `search` (the dynamic programme), `selection` (the statistics of the race), `choice` (the race),
and `stages` (the calibration itself, stage by stage).
"""

from .stages import calibrate


__all__ = ["calibrate"]
