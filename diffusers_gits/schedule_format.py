"""What a saved GITS schedule is, read by the schedulers, the Hub and the cache alike: the file names, the format
version, the scheduler classes a file may name, and the short calibration summary a scheduler config keeps."""

#: diffusers' scheduler config file.
CONFIG_NAME = "scheduler_config.json"
#: The full calibration record (settings, model calls, timings, report), beside the config: the config keeps a short
#: summary, so that a stock scheduler built from it (`EulerDiscreteScheduler.from_config`) warns about a few lines.
REPORT_NAME = "calibration_report.json"
#: The classes a schedule file may name (`_class_name`).
SCHEDULER_CLASSES = ("GITSScheduler", "GITSFlowMatchScheduler")
#: The newest schedule format this package reads (`calibration["format_version"]`).
FORMAT_VERSION = 1

#: What a scheduler config keeps of its calibration record (see `calibration_record`).
SUMMARY_KEYS = (
    "format_version", "package_version", "created", "model", "pipeline_class", "pipe_kwargs", "family", "mu", "solver",
    "preset", "coeff", "source", "table_shift", "mu_per_step",
)  # fmt: skip


def calibration_summary(record: dict) -> dict:
    """The short calibration summary a scheduler config holds: who made it on what, and the choice per step count."""
    summary = {key: record[key] for key in SUMMARY_KEYS if key in record}
    report = record.get("report") or {}
    if report:
        summary["chosen"] = {k: entry["chosen"] for k, entry in report.items()}
    return summary
