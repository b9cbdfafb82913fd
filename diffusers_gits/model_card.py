"""Sharing schedules: the model card, the schedule folder with its plot, the upload to a Hub model repo, and the
listing of a repo's schedules."""

import json
import logging
import tempfile
from pathlib import Path

from .noise import is_flow_scheduler_config
from .schedule_format import CONFIG_NAME
from .serialization import fetch_schedule_config, write_config, write_record


logger = logging.getLogger(__name__)

#: Calibration settings shown in the model card, in this order.
CARD_FIELDS = (
    "solver",
    "teacher",
    "jump_cost",
    "arrivals_per_node",
    "metric",
    "coeff",
    "num_warmup",
    "num_search",
    "num_holdout",
    "budget",
    "confidence",
    "require_confidence",
    "refine",
    "hedge",
    "seed",
)


def _steps(config: dict) -> list[int]:
    return sorted(int(k) for k in config.get("gits_sigmas") or {})


def closest_text(closest: dict | None) -> str:
    """`closest_baseline` as the report tables print it: "beta (0.812)", marked where it is from the search noises."""
    if not closest:
        return "-"
    where = ", search noises" if closest.get("on") == "search noises" else ""
    return f"{closest['name']} ({closest['ratio']:.3f}{where})"


def model_card(
    config: dict, repo_id: str | None = None, subfolder: str | None = None, record: dict | None = None
) -> str:
    """README.md with Hub metadata for a calibrated schedule (its scheduler config and calibration record): settings,
    schedules and the calibration report."""
    meta = record or config.get("calibration") or {}
    class_name = config["_class_name"]
    base_model = meta.get("model")
    front = ["---", "library_name: diffusers", "tags:", "- gits", "- scheduler", "- diffusers-gits"]
    if base_model and not Path(str(base_model)).is_absolute():
        front.append(f"base_model: {base_model}")
    front.append("---")
    location = f"`{repo_id}`" + (f", subfolder `{subfolder}`" if subfolder else "") if repo_id else "this folder"
    load_args = f'"{repo_id}"' + (f', subfolder="{subfolder}"' if subfolder else "") if repo_id else '"path/to/folder"'
    lines = front + [
        "",
        f"# GITS schedules for {base_model or 'a diffusers model'}",
        "",
        "Time schedules found by GITS (Chen et al., ICML 2024, arXiv 2405.11326) on the model's own sampling "
        f"trajectories with [diffusers-gits](https://pypi.org/project/diffusers-gits/). Stored in {location}.",
        "",
        "```python",
        f"from diffusers_gits import {class_name}",
        f"pipe.scheduler = {class_name}.from_pretrained({load_args})",
        "```",
        "",
        "## Calibration settings",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    for key in (
        "pipeline_class",
        "pipe_kwargs",
        "family",
        "mu",
        "grid",
        *CARD_FIELDS,
        "model_calls",
        "package_version",
    ):
        if key in meta:
            lines.append(f"| {key} | `{json.dumps(meta[key])}` |")
    convention = "flow sigmas, 1 to 0, shifted" if is_flow_scheduler_config(config) else "Karras / VE convention"
    lines += ["", f"## Schedules (sigmas, {convention})", "", "| steps | sigmas |", "|---|---|"]
    for k in _steps(config):
        lines.append(f"| {k} | {', '.join(f'{s:.4g}' for s in config['gits_sigmas'][str(k)])} |")
    report = meta.get("report") or {}
    if any("gits_error" in entry for entry in report.values()):
        lines += [
            "",
            "## Calibration report (held-out pooled RMSE to the teacher)",
            "",
            "| steps | chosen | its error | default schedule | best baseline (chosen / it) | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for k, entry in sorted(report.items(), key=lambda item: int(item[0])):
            if "gits_error" in entry:
                default = entry.get("default_error")
                closest = entry.get("closest_baseline")
                versus = closest_text(closest)
                lines.append(
                    f"| {k} | {entry['chosen']} | {entry['gits_error']:.4g} | "
                    f"{'-' if default is None else f'{default:.4g}'} | {versus} | {entry.get('summary', '')} |"
                )
    regularity = meta.get("regularity")
    if regularity:
        lines += [
            "",
            f"## Trajectory regularity of the model ({regularity['num_trajectories']} teacher trajectories)",
            "",
            "Why one calibrated schedule serves every prompt: how straight and how alike the model's sampling "
            "trajectories are (`diffusers_gits.geometry`; `diffusers-gits analyze` measures more).",
            "",
            "| measure | value |",
            "|---|---|",
            f"| deviation from the chord held by its top 1 / 2 / 3 principal directions | "
            f"{regularity['deviation_pca_top1']:.3f} / {regularity['deviation_pca_top2']:.3f} / "
            f"{regularity['deviation_pca_top3']:.3f} |",
            f"| largest distance from the chord (fraction of its length) | {regularity['max_deviation']:.4f} "
            f"(spread {regularity['max_deviation_spread']:.4f}) |",
            f"| deviation profile similarity, mean / lowest (regularity score) | "
            f"{regularity['profile_similarity']:.4f} / {regularity['regularity_score']:.4f} |",
        ]
    lines += ["", "![schedules](schedules.png)", ""]
    return "\n".join(lines)


def write_schedule_folder(
    config: dict,
    folder: str | Path,
    repo_id: str | None = None,
    subfolder: str | None = None,
    record: dict | None = None,
) -> Path:
    """Write a schedule's `scheduler_config.json`, its `calibration_report.json` (when it has a record), the model card
    `README.md` and, where matplotlib is installed, `schedules.png` into `folder`."""
    from .plotting import plots_available, save_schedule_plot

    folder = Path(folder)
    write_config(config, folder)
    if record is not None:
        write_record(record, folder)
    (folder / "README.md").write_text(model_card(config, repo_id, subfolder, record))
    if plots_available():
        save_schedule_plot({k: config["gits_sigmas"][str(k)] for k in _steps(config)}, folder / "schedules.png")
    else:
        logger.info("schedules.png left out: plots need matplotlib (pip install 'diffusers-gits[plots]')")
    return folder


def push_schedule(
    config: dict,
    repo_id: str,
    subfolder: str | None = None,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    record: dict | None = None,
) -> str:
    """Upload the schedule folder (config, calibration record, card, plot) to a Hub model repo, creating it if needed;
    return the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        write_schedule_folder(config, tmp, repo_id, subfolder, record)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            path_in_repo=subfolder,
            commit_message=commit_message or f"Upload GITS schedule{f' to {subfolder}' if subfolder else ''}",
            revision=revision,
            create_pr=create_pr,
        )
    return str(info.commit_url)


def list_schedules(
    repo_or_dir: str | Path, revision: str | None = None, token: str | bool | None = None
) -> list[dict]:
    """What a repo or folder holds: one entry per schedule folder with its subfolder, steps, model and solver."""
    if Path(repo_or_dir).is_dir():
        root = Path(repo_or_dir)
        files = [str(p.relative_to(root)) for p in root.rglob(CONFIG_NAME)]
    else:
        from huggingface_hub import HfApi

        files = [
            f
            for f in HfApi(token=token).list_repo_files(str(repo_or_dir), revision=revision)
            if f.endswith(CONFIG_NAME)
        ]
    entries = []
    for name in sorted(files):
        subfolder = str(Path(name).parent) if Path(name).parent != Path(".") else None
        config = fetch_schedule_config(repo_or_dir, subfolder=subfolder, revision=revision, token=token)
        meta = config.get("calibration") or {}
        entries.append(
            {
                "subfolder": subfolder,
                "steps": _steps(config),
                "model": meta.get("model"),
                "solver": config.get("solver"),
                "pipe_kwargs": meta.get("pipe_kwargs"),
            }
        )
    return entries
