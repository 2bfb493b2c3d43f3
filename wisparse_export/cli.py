"""The `wisparse` command: parses arguments, calls the library, prints. Bad input exits 2 in one line."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from dataclasses import replace

import click
from tqdm import std as tqdm_std

from . import bench as b
from . import check as checking
from . import data, pipeline, trt
from . import export as exporting
from . import tasks as lm_tasks
from .calibration import METHOD_ALPHA
from .config import CalibrationConfig, EvaluationConfig, SearchConfig, check_sparsity, search_budgets
from .data import load_text
from .errors import WisparseError
from .evaluate import evaluate as evaluate_plan
from .files import check_writable, write_json
from .models import DTYPES, check_plan, context_length, input_device, load_model, quantize_weights
from .plan import load_plan, save_plan
from .quant import OPTIONS, WeightFormat, by_option
from .report import bench_table, evaluation_table, plot_allocation


@contextlib.contextmanager
def output_policy(quiet: bool, verbose: bool):
    """The process's output, chosen here and restored afterwards (the library changes no global logging): warnings
    of transformers and lm-eval hidden unless --verbose, which shows their debug logs and ours; --quiet turns every
    progress bar off, other libraries' too (transformers' GGUF conversion bar is a plain tqdm nothing else reaches)."""
    from transformers.utils import logging as hf_logging

    loggers = [logging.getLogger(name) for name in ("wisparse_export", "lm_eval")]
    saved = hf_logging.get_verbosity(), [lg.level for lg in loggers], tqdm_std.tqdm.__init__
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    hf_logging.set_verbosity(logging.DEBUG if verbose else logging.ERROR)
    loggers[1].setLevel(logging.DEBUG if verbose else logging.ERROR)
    if verbose:
        loggers[0].setLevel(logging.DEBUG)
        for lg in loggers:
            lg.addHandler(handler)
    if quiet:
        tqdm_std.tqdm.__init__ = functools.partialmethod(_silent_init, saved[2])
    try:
        yield
    finally:
        hf_logging.set_verbosity(saved[0])
        for lg, level in zip(loggers, saved[1], strict=True):
            lg.setLevel(level)
            lg.removeHandler(handler)
        tqdm_std.tqdm.__init__ = saved[2]


def _silent_init(self, init, *args, **kwargs) -> None:
    init(self, *args, **{**kwargs, "disable": True})  # whatever the caller asked: --quiet means no bar at all


def output_options(command):
    """--quiet and --verbose on a command, applied through output_policy while it runs."""

    @click.option("--quiet", is_flag=True, help="No progress bars (ours or any library's) and no progress lines.")
    @click.option("--verbose", is_flag=True, help="Debug logs of wisparse, transformers and lm-eval on stderr.")
    @functools.wraps(command)
    def run(*args, quiet: bool, verbose: bool, **kwargs):
        if quiet and verbose:
            raise WisparseError("give --quiet or --verbose, not both")
        with output_policy(quiet, verbose):
            return command(*args, quiet=quiet, **kwargs)

    return run

MODEL = click.option("--model", "model_src", default=None,
                     help="Local folder, .gguf file or hub id (default: the embedded SmolLM2-135M); or random "
                     "weights of a real shape, for speed and capacity only: random:NAME (llama-3.1-8b, llama-3.1-70b, "
                     "llama-3.1-405b, qwen2.5-7b, mistral-7b-v0.3, gemma-2-9b, smollm2-135m) or random:CONFIG.json.")
DTYPE = click.option("--dtype", default="auto", show_default=True,
                     type=click.Choice(["auto", "float32", "float16", "bfloat16"]),
                     help="auto: float32 on CPU, bfloat16 on GPU.")
DEVICE = click.option("--device", default=None, help="cpu or cuda (default: cuda when present).")
LM_HEAD = click.option("--lm-head", "lm_head", default="none", show_default=True, metavar="|".join(OPTIONS),
                       help="Quantize the lm_head too, the same way as --weights (a tied one is untied first; the "
                       "embedding stays as it is); the plan records it. It is never sparsified: on a GPU its decode "
                       "rows run our kernel at threshold 0.")


def device_map_options(command):
    """--device-map and --offload-folder: the model spread over the GPUs by accelerate (instead of --device)."""
    command = click.option("--offload-folder", type=click.Path(file_okay=False), default=None,
                           help="Where a device map's \"disk\" modules are offloaded.")(command)
    return click.option("--device-map", default=None, metavar="auto|balanced|sequential|MAP.json",
                        help="Spread the model's blocks over every visible GPU with accelerate (a JSON map: "
                        "{module: GPU index, \"cpu\" or \"disk\"}; cpu and disk are offloaded). Not with "
                        "--device.")(command)
CALIBRATE, EVALUATE = CalibrationConfig.preset(), EvaluationConfig.preset()  # defaults: calibration/presets.json


def lean_gpu_memory() -> None:
    """Expandable segments for torch's CUDA allocator, unless the user chose a setting: calibrate's and evaluate's
    changing tensor sizes otherwise leave freed blocks reserved (8B on the H200: 24.5 GiB used for 16.0 GiB
    allocated, 16.7 GiB with it; docs/SCALE.md). Read when CUDA first allocates, so set before the model loads."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wisparse-export")
def cli() -> None:
    """Weight-aware activation sparsity for LLMs: calibrate, evaluate, export to ONNX / TensorRT, check."""


def search_config(budget: str | None, device, generations: int | None, offspring: int | None,
                  tokens: int | None) -> SearchConfig:
    """The preset (for the model's device) with the command line's overrides."""
    overrides = {"generations": generations, "offspring": offspring}
    if tokens is not None:
        overrides.update(rank_tokens=tokens, screen_tokens=max(1, tokens // 4))
    return replace(SearchConfig.preset(budget, device), **{k: v for k, v in overrides.items() if v is not None})


@cli.command()
@MODEL
@DTYPE
@DEVICE
@device_map_options
@click.option("--sparsity", type=float, required=True, help="Target parameter-weighted sparsity in [0, 1).")
@click.option("--method", type=click.Choice(list(METHOD_ALPHA)), default=CALIBRATE.method, show_default=True,
              help="teal: magnitude, uniform; wina: weight-aware, uniform; wisparse: weight-aware + allocation search.")
@click.option("--calib-text", multiple=True, help="Text file, folder, hf:NAME[:CONFIG] or builtin:pydoc (repeatable; "
              "default: the embedded corpus's calibration split).")
@click.option("--calib-tokens", type=int, default=CALIBRATE.tokens, show_default=True)
@click.option("--seq-len", type=int, default=CALIBRATE.seq_len, show_default=True,
              help="Tokens per sequence, at most the model's context.")
@click.option("--seed", type=int, default=CALIBRATE.seed, show_default=True,
              help="Seeds the calibration sequences and the search/validation split.")
@click.option("--validation", type=float, default=CALIBRATE.validation, show_default=True,
              help="Fraction of the calibration documents held out; wisparse decides its alpha, final plan and "
              "fallback to teal/wina on them.")
@click.option("--validation-tokens", type=int, default=CALIBRATE.validation_tokens, show_default=True,
              help="At most this many held-out tokens.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Plan file to write.")
@click.option("--search-budget", type=click.Choice(search_budgets()), default=None,
              help="wisparse search preset (calibration/search_presets.json; default: 'default' on a GPU, "
              "'fast' on CPU).")
@click.option("--search-generations", type=int, default=None, help="Override the preset's generations.")
@click.option("--search-offspring", type=int, default=None, help="Override the preset's offspring per generation.")
@click.option("--search-tokens", type=int, default=None,
              help="Override the preset's re-ranking tokens (offspring are screened on a quarter of them).")
@click.option("--search-workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes that evaluate each generation's offspring in parallel, one model replica each on its "
              "own GPU (cuda:0, cuda:1, ...; on CPU, processes on the host): the same plan as with 1.")
@click.option("--weights", "weights", default="none", show_default=True, metavar="|".join(OPTIONS),
              help="Quantize the decoder-block weights first (fp8: e4m3, int8: symmetric; one float32 scale per "
              "output channel) and calibrate on the quantized model; the plan records the format and evaluate, "
              "export and bench quantize the same way.")
@LM_HEAD
@output_options
def calibrate(model_src, dtype, device, device_map, offload_folder, sparsity, method, calib_text, calib_tokens,
              seq_len, seed, validation, validation_tokens, output, search_budget, search_generations, search_offspring,
              search_tokens, search_workers, weights, lm_head, quiet):
    """Calibrate thresholds on text and write a plan file (wisparse: never worse than teal and wina on the
    held-out validation documents; it writes the better of them otherwise, and says so)."""
    check_sparsity(sparsity, "--sparsity")
    lean_gpu_memory()
    weight_format, head = by_option(weights), by_option(lm_head, "--lm-head")
    config = replace(CALIBRATE, method=method, seq_len=seq_len, tokens=calib_tokens, seed=seed, validation=validation,
                     validation_tokens=validation_tokens)
    check_writable(output)
    text = load_text(list(calib_text), "calibration")
    loaded = load_model(model_src, dtype, device, not quiet, device_map, offload_folder)
    quantize_weights(loaded.model, weight_format, head)
    search = None
    if method == "wisparse":
        search = search_config(search_budget, input_device(loaded.model), search_generations, search_offspring,
                               search_tokens)
    # An interrupted search resumes from the checkpoint.
    plan = pipeline.calibrate(loaded, text, sparsity, config, search=search, checkpoint=f"{output}.search.json",
                              progress=not quiet, workers=search_workers)
    save_plan(plan, output)
    click.echo(f"wrote {output}: {len(plan.layers)} linears, method {plan.method}, budget {plan.budget:.4f}")


@cli.command()
@MODEL
@DTYPE
@DEVICE
@device_map_options
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False))
@click.option("--text", multiple=True, help="Evaluation text: file, folder or hf:NAME[:CONFIG] (repeatable; "
              "default: the embedded corpus's evaluation split).")
@click.option("--tokens", type=int, default=EVALUATE.tokens, show_default=True,
              help="At most this many evaluation tokens.")
@click.option("--seq-len", type=int, default=EVALUATE.seq_len, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the metrics as JSON.")
@click.option("--tasks", "task_names", default=None, help="Also zero-shot accuracy on lm-eval tasks, dense and sparse: "
              "NAME[,NAME...] (arc_easy, hellaswag, piqa, ...; needs the [eval] extra and the tasks' datasets).")
@click.option("--task-limit", type=click.IntRange(min=1), default=None, help="At most this many items per task.")
@click.option("--task-path", type=click.Path(file_okay=False), default=None,
              help="A folder of your own lm-eval YAML tasks, usable by name in --tasks.")
@output_options
def evaluate(model_src, dtype, device, device_map, offload_folder, plan_path, text, tokens, seq_len, json_out,
             task_names, task_limit, task_path, quiet):
    """Dense vs sparse: perplexity, KL, top-1 agreement, realized sparsity (and task accuracy with --tasks)."""
    lean_gpu_memory()
    data.check_lengths(seq_len, tokens)
    plan = load_plan(plan_path)
    if json_out:
        check_writable(json_out)
    tasks = None
    if task_names is not None:  # load tasks and their datasets first: a missing one fails before the long run
        task_config = lm_tasks.TaskConfig(lm_tasks.parse_names(task_names), task_limit, include_path=task_path)
        tasks = lm_tasks.load_tasks(task_config)
    evaluation = data.load_text(list(text), "evaluation")
    calibration_text = data.reload_calibration(plan.calibration)
    if calibration_text is not None:
        data.check_disjoint(calibration_text, evaluation)
    loaded = load_model(model_src or plan.model.get("source"), dtype, device, not quiet, device_map, offload_folder)
    check_plan(quantize_weights(loaded.model, plan.weights, plan.lm_head), plan)
    data.check_lengths(seq_len, tokens, context_length(loaded.model))
    seqs = data.sequences(loaded.tokenizer, evaluation, seq_len, tokens)
    result = evaluate_plan(loaded.model, plan, seqs, progress=not quiet, source=loaded.source)
    result["text"] = evaluation.description
    click.echo(evaluation_table(result))
    if tasks is not None:
        result["task_accuracy"] = lm_tasks.evaluate_tasks(loaded, plan, task_config, not quiet, tasks)
        click.echo(lm_tasks.table_of(result["task_accuracy"]))
    if json_out:
        write_json(json_out, result)
        click.echo(f"wrote {json_out}")


@cli.command()
@MODEL
@click.option("--shape", default=None, help="Same as --model random:NAME (random weights of a shipped config).")
@DTYPE
@DEVICE
@device_map_options
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False),
              help="Plan to time, with its own per-layer thresholds (default: uniform thresholds for --sparsity from "
              "random tokens, speed only).")
@click.option("--sparsity", type=float, multiple=True, help="Target sparsity (repeatable; default 0.5).")
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--steps", type=int, default=128, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Time every path this many times (steps each) and report the median.")
@click.option("--no-graphs", is_flag=True, help="Run eagerly instead of replaying a CUDA graph per step.")
@click.option("--no-fuse", is_flag=True, help="One launch per linear instead of fused q/k/v and gate/up.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the decode step (dense and sparse alike).")
@click.option("--weights", "weights", default=None, metavar="|".join(OPTIONS),
              help="Quantize the decoder-block weights first (default: none, or the plan's format) and also time the "
              "dense path on the 1-byte weights.")
@click.option("--lm-head", "lm_head", default=None, metavar="|".join(OPTIONS),
              help="Quantize the lm_head too (default: none, or the plan's); the dense run keeps the dequantized "
              "weight in the model's dtype, the 1-byte paths read it on our kernel at threshold 0.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the result as JSON.")
@output_options
def bench(model_src, shape, dtype, device, device_map, offload_folder, plan_path, sparsity, batch, steps, repeats,
          no_graphs, no_fuse, compile_, weights, lm_head, json_out, quiet):
    """Decode tokens/s, dense vs sparse in one runtime (static KV cache, CUDA graphs, sparse kernels on GPU)."""

    sparsities = list(sparsity) or [0.5]
    if plan_path and sparsity:
        raise WisparseError("give --plan or --sparsity, not both (a plan times its own per-layer thresholds)")
    weight_format = by_option(weights) if weights is not None else None
    head = by_option(lm_head, "--lm-head") if lm_head is not None else None
    if any(not 0.0 <= s < 1.0 for s in sparsities):
        raise WisparseError("--sparsity must be in [0, 1)")
    if json_out:
        check_writable(json_out)
    if shape and model_src:
        raise WisparseError("give --model or --shape, not both")
    plan = load_plan(plan_path) if plan_path else None
    if plan is not None:
        same_as_plan("--weights", weights, weight_format, plan.weights, "weights")
        same_as_plan("--lm-head", lm_head, head, plan.lm_head, "lm_head")
    loaded = load_model(f"random:{shape}" if shape else model_src, dtype, device, not quiet, device_map,
                        offload_folder)
    if plan is not None:
        check_plan(quantize_weights(loaded.model, plan.weights, plan.lm_head), plan)
    else:
        quantize_weights(loaded.model, weight_format, head)
    result = b.run(loaded.model, sparsities, batch=batch, steps=steps, graphs=not no_graphs, fuse=not no_fuse,
                   plan=plan, label=loaded.source, compile=compile_, repeats=repeats)
    click.echo(bench_header(result))
    click.echo(f"thresholds: plan {plan_path} ({plan.method}, per-layer, {plan.digest()})" if plan is not None
               else "thresholds: uniform, |x| quantiles on random tokens (alpha 0) at each --sparsity")
    click.echo(bench_table(result))
    if json_out:
        write_json(json_out, result)
        click.echo(f"wrote {json_out}")


def bench_header(r: dict) -> str:
    mode = ("CUDA graphs" if r["graphs"] else "eager") + (", torch.compile" if r["compiled"] else "")
    return (f"{r['model']} on {r['device']}, {r['dtype']}, batch {r['batch']}, {r['steps']} steps (median of "
            f"{r['repeats']}), {mode}")


def same_as_plan(option: str, value: str | None, fmt: WeightFormat | None, planned: WeightFormat | None,
                 field: str) -> None:
    """A format option given with --plan must be the plan's own (it is taken from the plan)."""
    if value is not None and fmt != planned:
        raise WisparseError(f"{option} {value} differs from the plan's {field} "
                            f"({planned.name if planned else 'none'}): leave {option} out with --plan")


@cli.command("export")
@MODEL
@DEVICE
@device_map_options
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), help="Folder to write: dense.onnx, sparse.onnx, "
              "weights.onnx.data, config.json, generation_config.json, genai_config.json, the tokenizer, manifest.json "
              "(new or empty, or an earlier export's: only the files its manifest names are replaced).")
@click.option("--dtype", "export_dtype", default="float32", show_default=True,
              help="Weights and activations of the graphs: float32, float16 or bfloat16 (TensorRT: float16/bfloat16); "
              "the model is loaded in it.")
@click.option("--external-data/--no-external-data", default=True, show_default=True,
              help="Weights in one file both graphs share (weights.onnx.data), or inside each graph (small models).")
@output_options
def export_cmd(model_src, device, device_map, offload_folder, plan_path, output, export_dtype, external_data, quiet):
    """Write the dense and sparse ONNX decoder steps (KV cache, dynamic batch and length) and a manifest."""

    if export_dtype not in DTYPES:
        raise WisparseError(f"unsupported dtype {export_dtype!r}; choose one of {', '.join(DTYPES)}")
    plan = load_plan(plan_path)
    loaded = load_model(model_src or plan.model.get("source"), export_dtype, device, not quiet, device_map,
                        offload_folder)
    quantize_weights(loaded.model, plan.weights, plan.lm_head)
    m = exporting.export(loaded, plan, output, export_dtype, external_data, log=lambda line: click.echo(line, err=True))
    click.echo(f"wrote {output}: dense.onnx, sparse.onnx ({m['counts']['sparse_linear_nodes']} SparseLinear nodes), "
               f"{m['files']['weights'] or 'weights inside each graph'}, {export_dtype}, opset {m['opset']}, "
               f"plan {m['plan']['digest']}")


@cli.command("check")
@click.argument("out", type=click.Path())
@click.option("--text", multiple=True, help="Evaluation text: file, folder or hf:NAME[:CONFIG] (repeatable; "
              "default: the embedded corpus's evaluation split).")
@click.option("--tokens", type=int, default=16384, show_default=True, help="At most this many evaluation tokens.")
@click.option("--seq-len", type=int, default=512, show_default=True)
@click.option("--max-ppl-increase", type=float, help="Gate: sparse perplexity at most this fraction above dense "
              "(0.5 = +50%).")
@click.option("--max-kl", type=float, help="Gate: mean KL(dense || sparse) per token, in nats.")
@click.option("--min-agreement", type=float, help="Gate: top-1 agreement of sparse with dense, in [0, 1].")
@click.option("--engine", is_flag=True, help="Check the TensorRT engines (wisparse build) against dense.onnx.")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="ONNX Runtime execution provider (cuda: the onnxruntime-gpu package).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the report as JSON.")
@output_options
def check_cmd(out, text, tokens, seq_len, max_ppl_increase, max_kl, min_agreement, engine, provider, json_out, quiet):
    """Run dense.onnx and sparse.onnx (or the engines) on text; exit 1 if a gate fails."""

    if json_out:
        check_writable(json_out)
    report = checking.check(out, list(text), tokens, seq_len, max_ppl_increase, max_kl, min_agreement, engine=engine,
                            progress=not quiet, provider=provider,
                            log=None if quiet else lambda line: click.echo(line, err=True))
    click.echo(checking.summary(report))
    if json_out:
        write_json(json_out, report)
        click.echo(f"wrote {json_out}")
    if not report["passed"]:
        click.echo("gate failed: " + checking.failed(report), err=True)
        sys.exit(1)


@cli.command("build")
@click.argument("out", type=click.Path())
@click.option("--workspace", type=float, default=4.0, show_default=True, help="Builder workspace, GiB.")
@click.option("--max-batch", type=int, default=1, show_default=True)
@click.option("--max-prefill", type=int, default=512, show_default=True, help="Longest prompt of the prefill profile.")
@click.option("--max-context", type=int, default=2048, show_default=True, help="Longest cache of the decode profile.")
@output_options
def build_cmd(out, workspace, max_batch, max_prefill, max_context, quiet):
    """Build OUT/dense.engine and OUT/sparse.engine with TensorRT (decode and prefill profiles)."""

    info = trt.build(out, workspace, max_batch, max_prefill, max_context,
                     log=None if quiet else lambda line: click.echo(line, err=True))
    click.echo(f"wrote {', '.join(e['file'] for e in info['engines'].values())} in {out} "
               f"(TensorRT {info['tensorrt']}, {info['dtype']})")


@cli.command()
@click.argument("plan_path", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Image to write (.png, .svg).")
def plot(plan_path, output):
    """Draw a plan's per-block and per-projection sparsity."""
    from matplotlib.backend_bases import FigureCanvasBase


    check_writable(output)
    fmt = output.rsplit(".", 1)[-1].lower() if "." in output else "png"
    if fmt not in FigureCanvasBase.get_supported_filetypes():
        raise WisparseError(f"cannot write {output}: .{fmt} is not an image format "
                            f"({', '.join(sorted(FigureCanvasBase.get_supported_filetypes()))})")
    plot_allocation(load_plan(plan_path).to_dict(), output)
    click.echo(f"wrote {output}")


def main() -> None:
    """Entry point: WisparseError -> one line on stderr, exit 2; gate failures are the commands' own exit 1."""
    try:
        cli.main(standalone_mode=False)
    except WisparseError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
