"""Zero-shot task accuracy (arc_easy, hellaswag, piqa, ...) through lm-evaluation-harness, dense and sparse side by
side: how papers judge activation sparsity ("97% of dense performance at 50%"), which perplexity alone does not say.

lm-eval's own command line loads a model by name and cannot take a plan; here its `HFLM` wraps the model we have
already loaded, `apply` makes it sparse, and `dense_mode` gives the dense reference on the very same object. The
tasks are loaded once (datasets from the hub, or the user's own YAML tasks under `include_path`) and run twice.
lm-eval is optional and heavy (the `[eval]` extra): imported here, inside functions, only when tasks are asked for.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from importlib.metadata import version

from .errors import WisparseError
from .evaluate import weighted_sparsity
from .models import Loaded
from .plan import Plan
from .report import table
from .runtime import apply, dense_mode, track_sparsity

METRICS = ("acc", "acc_norm")  # what multiple-choice tasks report; the usual table reads acc_norm where present
REQUEST_TYPES = ("loglikelihood", "loglikelihood_rolling", "generate_until")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskConfig:
    """Which tasks and how: limit = at most this many items per task (None: all); num_fewshot None = the task's
    own default (0 for the usual zero-shot table); include_path = a folder of extra YAML task definitions."""

    names: tuple[str, ...]
    limit: int | None = None
    num_fewshot: int | None = None
    batch_size: int = 8
    include_path: str | None = None


def parse_names(spec: str) -> tuple[str, ...]:
    """'arc_easy,piqa' -> ('arc_easy', 'piqa'); an empty name is refused in one line."""
    names = tuple(n.strip() for n in spec.split(","))
    if not all(names):
        raise WisparseError(f"--tasks takes NAME[,NAME...], got {spec!r}")
    return names


def require():
    """The lm_eval package, or one line naming the extra that installs it."""
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401
    except ImportError as e:
        raise WisparseError(f"--tasks needs lm-evaluation-harness ({e.name} is missing): "
                            "pip install \"wisparse-export[eval]\"") from e
    return lm_eval


def load_tasks(config: TaskConfig) -> dict:
    """lm-eval's task dictionary for config.names, datasets fetched; unknown names and unreachable datasets are one
    line each (lm-eval raises many types from many libraries here: none of them is a bug of ours)."""
    require()
    from lm_eval.tasks import TaskManager

    if config.include_path is not None and not os.path.isdir(config.include_path):
        raise WisparseError(f"task folder not found: {config.include_path}")
    manager = TaskManager(include_path=config.include_path)
    unknown = [n for n in config.names if n not in manager.all_tasks]
    if unknown:
        raise WisparseError(f"unknown lm-eval task {unknown[0]!r} (`lm-eval ls tasks` lists them; --task-path adds "
                            "a folder of your own YAML tasks)")
    try:
        tasks = manager.load(list(config.names))
    except Exception as e:  # noqa: BLE001 - datasets, hub, fsspec and yaml errors share no type
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WisparseError(f"cannot load tasks {','.join(config.names)}: {first} (their datasets come from the "
                            "hub: is it reachable, or cached?)") from e
    for task in tasks["tasks"].values():
        if config.num_fewshot is not None:
            task.set_config(key="num_fewshot", value=config.num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=1234)  # lm-eval's default: the same few-shot examples as its command line
    return tasks


def wrap(loaded: Loaded, batch_size: int, progress: bool):
    """lm-eval's HFLM around our model and tokenizer (no second copy); progress=False turns its request bars off."""
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size)
    if not progress:
        for name in REQUEST_TYPES:
            setattr(lm, name, functools.partial(getattr(lm, name), disable_tqdm=True))
    return lm


def scores(lm, tasks: dict, limit: int | None) -> dict[str, dict]:
    """{task: {metric: value, 'n': items}} for every task that reports acc or acc_norm."""
    from lm_eval.evaluator import evaluate

    out = evaluate(lm=lm, task_dict=tasks, limit=limit, log_samples=False, bootstrap_iters=0)
    found = {}
    for name, r in out["results"].items():
        metrics = {m: r[f"{m},none"] for m in METRICS if isinstance(r.get(f"{m},none"), (int, float))}
        if metrics:
            found[name] = {**metrics, "n": out["n-samples"].get(name, {}).get("effective")}
    if not found:
        raise WisparseError(f"tasks {', '.join(tasks['tasks'])} report no acc or acc_norm (only multiple-choice "
                            "tasks are compared)")
    return found


def side_by_side(dense: dict[str, dict], sparse: dict[str, dict]) -> dict:
    """Per task and metric: dense, sparse and ratio (sparse / dense: the fraction of dense performance kept); and
    the mean over tasks of each task's headline metric (acc_norm where it has one, else acc)."""
    tasks = {}
    for name, d in dense.items():
        tasks[name] = {m: {"dense": d[m], "sparse": sparse[name][m], "ratio": ratio(sparse[name][m], d[m])}
                       for m in METRICS if m in d}
        tasks[name]["n"] = d["n"]
    heads = [t["acc_norm" if "acc_norm" in t else "acc"] for t in tasks.values()]
    mean_dense = sum(h["dense"] for h in heads) / len(heads)
    mean_sparse = sum(h["sparse"] for h in heads) / len(heads)
    return {"tasks": tasks, "mean": {"dense": mean_dense, "sparse": mean_sparse,
                                     "ratio": ratio(mean_sparse, mean_dense)}}


def ratio(sparse: float, dense: float) -> float | None:
    return sparse / dense if dense > 0 else None  # no ratio of a task the dense model gets entirely wrong


def evaluate_tasks(loaded: Loaded, plan: Plan, config: TaskConfig, progress: bool = True,
                   tasks: dict | None = None) -> dict:
    """Dense and sparse accuracy on lm-eval tasks, and the sparsity realized on their prompts (every position the
    model ran, padding included); tasks: load_tasks(config) done earlier (to fail before a long run), or None.
    The model is left with the plan applied."""
    tasks = load_tasks(config) if tasks is None else tasks
    apply(loaded.model, plan)
    lm = wrap(loaded, config.batch_size, progress)
    log.debug("tasks %s: dense pass", ",".join(config.names))
    with dense_mode(loaded.model):
        dense = scores(lm, tasks, config.limit)
    log.debug("tasks %s: sparse pass", ",".join(config.names))
    with track_sparsity(loaded.model) as realized:
        sparse = scores(lm, tasks, config.limit)
        per_layer = realized()
    return {**side_by_side(dense, sparse), "realized_sparsity": weighted_sparsity(per_layer, plan),
            "limit": config.limit, "num_fewshot": config.num_fewshot, "lm_eval": version("lm_eval")}


def table_of(result: dict) -> str:
    """Dense and sparse accuracy per task and metric, and the percent of dense performance kept."""
    pct = lambda r: "-" if r is None else f"{100 * r:.1f}%"
    rows = [[name, m, t[m]["dense"], t[m]["sparse"], pct(t[m]["ratio"]), t["n"]]
            for name, t in result["tasks"].items() for m in METRICS if m in t]
    mean = result["mean"]
    rows.append(["mean", "headline", mean["dense"], mean["sparse"], pct(mean["ratio"]), ""])
    return table(["task", "metric", "dense", "sparse", "of dense", "n"], rows)
