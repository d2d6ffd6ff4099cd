"""``dsw-ray sweep STUDY.yaml``: a study, one job run at every point of a grid over any config
keys, the points sharing every stage they have in common, then the scaling report (``scaling``).

A study file names the job, what to set at every point, and the grid::

    job: quickstart.yaml            # relative to the study file
    overrides: ["methods=[iwsi]"]   # key=value, as on the command line, at every point
    grid:                           # every combination of the axes' values is a point, in this order
      task.num_questions: [100, 200]
      actors:                       # an axis of several keys, set together: 1 and 1, then 2 and 2
        generate.actors: [1, 2]
        score.actors: [1, 2]
    out: runs/study                 # points/<point>/ (a run directory each), store/, scaling.md

Every point is loaded and validated before the first one starts. The points run one after
another in one Ray session, each in its own run directory, all with one stage store
(``job.store``): a stage whose settings and inputs an earlier point had (the candidates and
scores of points that differ only in the keep fraction or the learning rate) is linked from
the store, not computed again. A rerun of the study resumes every point where it stopped.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from dataclasses import dataclass

from pydantic import Field, ValidationError

from dsw_ray.config import JobConfig, Section, format_validation_error, load_job, read_mapping
from dsw_ray.errors import ConfigError
from dsw_ray.rundir import write_json

log = logging.getLogger(__name__)

STUDY_FILE = "study.json"  # in the study's folder: its grid and points
STORE = "store"
POINTS = "points"
# The study sets where each point writes and what it shares; one Ray session runs every point.
SET_BY_THE_STUDY = ("run_dir", "store", "ray")


class StudyConfig(Section):
    job: str = Field(description="The job file every point runs (relative to the study file).")
    overrides: list[str] = Field([], description="key=value settings at every point, e.g. methods=[iwsi].")
    grid: dict[str, list | dict[str, list]] = Field(
        min_length=1,
        description="Axis -> its values: a config key and its values, or a name and several keys whose values are "
        "set together (lists of one length). Every combination of the axes' values is a point.",
    )
    out: str = Field(description="The study's folder: a run directory per point, the stage store, the report.")


@dataclass(frozen=True)
class Point:
    """One job of the study: its name (its folder under ``points/``), each axis's value, the job."""

    name: str
    values: dict
    job: JobConfig


def axes(grid: dict, path: str) -> list[tuple[str, list[dict], list]]:
    """Each axis of the grid: its name, the config keys it sets at each of its steps, and the
    value the report shows for each step (the keys' common value, else all of them)."""
    found = []
    for axis, values in grid.items():
        keyed = values if isinstance(values, dict) else {axis: values}
        lengths = {len(v) for v in keyed.values()}
        if not keyed or lengths == {0}:
            raise ConfigError(f"{path}: grid axis {axis!r} has no values.")
        if len(lengths) > 1:
            raise ConfigError(f"{path}: grid axis {axis!r} sets its keys together, so their lists need one length.")
        for key in keyed:
            if key.split(".")[0] in SET_BY_THE_STUDY:
                raise ConfigError(
                    f"{path}: grid key {key!r} cannot be swept: the study sets run_dir and store for each point, and "
                    "one Ray session runs every point (sweep ray settings with one study per setting)."
                )
        steps = [dict(zip(keyed, step)) for step in zip(*keyed.values())]
        shown = [next(iter(step.values())) if len({json.dumps(v) for v in step.values()}) == 1
                 else "/".join(str(v) for v in step.values()) for step in steps]  # fmt: skip
        found.append((axis, steps, shown))
    return found


def point_name(shown: dict) -> str:
    """``actors=2,num_questions=40``: each axis's last part and value, safe as a folder name."""
    parts = []
    for axis, value in shown.items():
        text = value if isinstance(value, str) else json.dumps(value)
        parts.append(f"{axis.split('.')[-1]}={re.sub(r'[^A-Za-z0-9._=+-]+', '_', text)[-40:]}")
    return ",".join(parts)


def load_study(path: str, overrides: list[str] = ()) -> tuple[StudyConfig, list[Point]]:
    """The study and the job of each of its points, validated; a mistake is a ConfigError
    naming the study file (and the point, for a value its job refuses)."""
    try:
        study = StudyConfig.model_validate(read_mapping(path, "study"))
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, path, "study", StudyConfig)) from None
    grid = axes(study.grid, path)
    job_path = os.path.join(os.path.dirname(os.path.abspath(path)), study.job)
    out = os.path.abspath(study.out)
    points = []
    for combination in itertools.product(*(range(len(steps)) for _, steps, _ in grid)):
        shown = {axis: values[i] for (axis, _, values), i in zip(grid, combination)}
        name = point_name(shown)
        assignments = [f"{key}={json.dumps(value)}" for (_, steps, _), i in zip(grid, combination)
                       for key, value in steps[i].items()]  # fmt: skip
        where = [f"run_dir={os.path.join(out, POINTS, name)}", f"store={os.path.join(out, STORE)}"]
        try:
            job = load_job(job_path, [*study.overrides, *overrides, *assignments, *where])
        except ConfigError as error:
            raise ConfigError(f"{path}, point {name}: {error}") from None
        points.append(Point(name, shown, job))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: two points have the same name ({names}); give the grid distinct values.")
    return study, points


def run_study(path: str, overrides: list[str] = ()) -> str:
    """Run every point of the study (each resumes where it stopped), then write the scaling
    report into the study's folder and return it as text."""
    from dsw_ray.pipeline import run_job
    from dsw_ray.scaling import cluster_now, write_scaling_report

    study, points = load_study(path, overrides)
    out = os.path.abspath(study.out)
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, STUDY_FILE), {"study": path, "grid": study.grid, "points": [
        {"name": p.name, "values": p.values, "run_dir": p.job.run_dir} for p in points]})  # fmt: skip
    for index, point in enumerate(points, 1):
        log.info("study %s: point %d of %d, %s", study.out, index, len(points), point.name)
        run_job(point.job)
    report = write_scaling_report(out, study.grid, points, cluster_now())
    return f"{report}\nstudy folder: {out} (scaling.md, scaling.json, plots, a run directory per point in points/)"
