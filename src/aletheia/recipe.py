"""The recipes behind the CLI verbs: probe, train (one method) and compare (both, paired).

Each reads top to bottom as the algorithm: load → probe → select → train → evaluate → save.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import distributed
from .architectures import get_architecture, num_layers, resolve_architecture, set_architecture
from .chat_templates import use_chat_template
from .checkpoint import trainable_state
from .config import MAX_STEPS, RunConfig, TrainConfig
from .cost import matched_adapter, module_shapes
from .data import batches_per_epoch, eval_batches, probe_batches, tokenize_examples
from .errors import AletheiaError
from .evaluation.loss import exact_match_accuracy, heldout_loss
from .examples import Example, load_examples, split_examples
from .interrupts import graceful_stop
from .lora import aletheia_lora_config, apply_lora, found_adapters, standard_lora_config, trainable_parameters
from .models import check_quantize, load_model_and_tokenizer
from .packing import padding_free, set_padding_free
from .runs import RunFolder, RunRecord, write_record
from .selection import Selection, SelectionContext, read_probe_json, select_layers, write_probe_json
from .trackers import open_trackers
from .train import train_lora
from .utils import (
    atomic_write_text,
    git_revision,
    package_versions,
    resolve_device,
    resolve_dtype,
    set_seed,
    timestamp,
    write_json,
)


def log(msg: str) -> None:
    print(f"aletheia: {msg}", file=sys.stderr, flush=True)


@dataclass
class Workspace:
    """A loaded model with its data, tokenised and split with the run's seed."""

    model: torch.nn.Module
    tokenizer: object
    train_items: list
    eval_items: list
    eval_examples: list[Example]
    device: torch.device
    dtype: torch.dtype
    model_path: str


def prepare(cfg: RunConfig, device: str | None = None, examples: list[Example] | None = None) -> Workspace:
    """Load the model and tokenizer, read and split the data, tokenise it."""
    dev = resolve_device(device)
    if distributed.init_from_env(dev):  # started by accelerate launch / torchrun
        dev = distributed.local_device(dev)
        if cfg.memory.device_map:
            raise AletheiaError("device_map spreads one model over all GPUs, a data-parallel launch gives each "
                                "process its own GPU: use one or the other")
    dtype = resolve_dtype(cfg.train.dtype, dev)
    check_quantize(cfg.memory.quantize, dev)  # before any data is read or weights are loaded
    examples = load_examples(cfg.data) if examples is None else examples
    train_ex, eval_ex = split_examples(examples, cfg.data.eval_fraction, cfg.data.max_eval_examples, cfg.seed)
    extra = {"device_map": cfg.memory.device_map} if cfg.memory.device_map else {}
    model, tokenizer = load_model_and_tokenizer(cfg.model, dtype=dtype, device=dev, quantize=cfg.memory.quantize,
                                                gradient_checkpointing=cfg.memory.gradient_checkpointing, **extra)
    a = cfg.architecture  # fail early: an unknown architecture lists what it found and the options
    arch = resolve_architecture(model, a.blocks_path, a.attention_modules, a.mlp_modules)
    set_architecture(model, arch)
    set_padding_free(model, cfg.data.padding_free)  # every step on this model reads it
    eval_ex = eval_ex[:eval_size(cfg, len(eval_ex), len(train_ex))]
    if arch.family in ("generic", "custom"):  # say where the adapters will go when no registry entry did
        log(f"{arch.model_types[0]}: {arch.family} architecture, blocks at '{arch.blocks_path}', "
            f"attention {list(arch.attention)}, MLP {list(arch.mlp)}")
    use_chat_template(tokenizer, cfg.data.chat_template)  # the run folder saves it with the tokenizer
    train_items = tokenize_examples(tokenizer, train_ex, cfg.data.max_length, cfg.data.train_on)
    eval_items = tokenize_examples(tokenizer, eval_ex, cfg.data.max_length, cfg.data.train_on)
    if not train_items:
        raise AletheiaError("no training example keeps a response token after tokenisation; raise --max-length")
    return Workspace(model, tokenizer, train_items, eval_items, eval_ex, dev, dtype, model.aletheia_source)


def resolve_steps(train: TrainConfig, n_items: int) -> TrainConfig:
    """``train`` with its step count fixed: ``train.epochs`` passes over the ``n_items`` training
    examples become optimizer steps. Both methods of a pair see the same split, so the same steps."""
    if train.epochs is None:
        return train
    per_epoch = batches_per_epoch(n_items, train.batch_size)
    steps = train.steps_for(per_epoch)
    if steps > MAX_STEPS:
        raise AletheiaError(f"train.epochs {train.epochs:g} is {steps:,} optimizer steps, beyond the cap of "
                            f"{MAX_STEPS:,}; check for a typo, e.g. 3")
    log(f"train.epochs {train.epochs:g}: {n_items} training examples, {per_epoch} batches of "
        f"{train.batch_size} per epoch, grad_accum {train.grad_accum} -> {steps} optimizer steps")
    return train.replace(steps=steps)


def eval_size(cfg: RunConfig, held_out: int, n_train: int) -> int:
    """How many of the ``held_out`` split examples a run evaluates (before, during and after training).

    No more than the examples its training draws (``steps × batch_size × grad_accum``, or ``epochs``
    passes over the ``n_train`` examples; at least one eval batch of 8): evaluating a 3-step smoke run
    on 64 examples, before and after, took longer than training it. From 8 steps at the default batch
    on this is the whole split (64), so longer runs evaluate as before. The split is unchanged, so
    training sees the same examples.
    """
    t = cfg.train
    drawn = math.ceil(t.epochs * n_train) if t.epochs is not None else t.steps * t.batch_size * t.grad_accum
    return min(held_out, max(8, drawn))


def probe_and_select(cfg: RunConfig, ws: Workspace, progress: bool = True) -> Selection:
    """Draw the probe batches with the seed and run the configured selector."""
    pad = ws.tokenizer.pad_token_id
    batches = probe_batches(ws.train_items, cfg.probe.batches, cfg.probe.batch_size, cfg.seed, pad)
    set_seed(cfg.seed)
    ctx = SelectionContext(ws.model, batches, cfg.probe, cfg.seed, progress, adapter=cfg.adapter)
    selection = select_layers(ctx)
    log(f"selected {len(selection.layers)}/{selection.num_layers} layers {selection.layers} "
        f"({selection.signal_kept:.0%} of the score) in {selection.seconds:.1f}s")
    return selection


def evaluate(cfg: RunConfig, ws: Workspace, model, progress: bool = True) -> dict:
    """Held-out loss, plus exact-match accuracy for the bootstrap set."""
    out = {"eval_loss": heldout_loss(model, eval_batches(ws.eval_items, 8, ws.tokenizer.pad_token_id), progress)}
    if cfg.eval_accuracy_examples and cfg.data.path is None:
        acc = exact_match_accuracy(model, ws.tokenizer, ws.eval_examples[: cfg.eval_accuracy_examples],
                                   progress=progress)
        out.update(accuracy=acc["accuracy"], accuracy_samples=acc["samples"])
    return out


def run_probe_only(cfg: RunConfig, progress: bool = True, device: str | None = None,
                   overwrite: bool = False) -> Selection:
    """``aletheia probe``: scores and selection, written to ``OUTPUT/probe.json`` and a PNG."""
    from .plots import plot_probe_scores

    cfg.validate()
    folder = RunFolder(cfg.output, overwrite, kind="probe", active=distributed.is_main_process())
    with folder as out:
        ws = prepare(cfg, device)
        selection = probe_and_select(cfg, ws, progress)
        if folder.active:
            write_probe_json(out / "probe.json", selection, model_path=ws.model_path, seed=cfg.seed)
            plot_probe_scores(selection, out / "probe_scores.png", title=Path(ws.model_path).name)
            atomic_write_text(out / "config.yaml", cfg.to_yaml())
        folder.commit()
    return selection


def run_training(
    cfg: RunConfig,
    selection: Selection | None = None,
    progress: bool = True,
    device: str | None = None,
    overwrite: bool = False,
    baseline: dict | None = None,
    resume: bool = False,
) -> RunRecord:
    """Train one method and write its run folder; returns its record (``summary.json``).

    ``selection``: reuse a probe result (``compare`` probes once for both methods).
    ``baseline``: reuse the base model's held-out metrics instead of recomputing them.
    ``resume``: continue the unfinished run in ``cfg.output`` from its newest checkpoint.
    """
    cfg.validate()
    main = distributed.is_main_process()  # under a data-parallel launch only process 0 writes files
    folder = RunFolder(cfg.output, overwrite, kind=cfg.method, active=main, resume=resume)
    with folder as out:  # staged in OUTPUT/.partial until complete: nothing finished is ever lost
        checkpoint = resume_point(out, cfg) if resume else None
        if checkpoint is not None and cfg.method == "aletheia" and (out / "probe.json").is_file():
            selection = read_probe_json(out / "probe.json")  # the layers it trained, not a new probe
        record = _train_into(out, cfg, selection, progress, device, baseline, main, checkpoint)
        folder.commit(record.status)
    distributed.barrier()  # the run folder is complete when any process returns
    return record


def resume_point(out: Path, cfg: RunConfig) -> Path:
    """The newest checkpoint of the unfinished run staged in ``out``, if it was made by ``cfg``."""
    from .checkpoint import latest

    saved = out / "config.yaml"
    if saved.is_file():
        differ = _differences(RunConfig.from_yaml(saved).to_dict(), cfg.to_dict(), {"output"})
        if differ:
            raise AletheiaError(f"--resume: the checkpoint in {out} was made with other settings ("
                                + "; ".join(differ[:5]) + "); resume with the same settings, or "
                                "drop --resume and pass --overwrite to start again")
    if (found := latest(out / "checkpoints")) is None:
        raise AletheiaError(f"--resume: the unfinished run in {out} has no checkpoint yet; rerun with "
                            "--overwrite to start again (add --train.save_every N to checkpoint)")
    log(f"resuming from {found.name} ({out})")
    return found


def _differences(old: dict, new: dict, ignore: set[str], prefix: str = "") -> list[str]:
    out = []
    for key in sorted((set(old) | set(new)) - ignore):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, set(), f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} then, {b!r} now")
    return out


def _train_into(out: Path, cfg: RunConfig, selection: Selection | None, progress: bool, device: str | None,
                baseline: dict | None, main: bool, checkpoint: Path | None = None) -> RunRecord:
    # load
    set_seed(cfg.seed)
    ws = prepare(cfg, device)
    if main:
        atomic_write_text(out / "config.yaml", cfg.to_yaml())
    arch = get_architecture(ws.model)
    layers_total = num_layers(ws.model)
    base_params = sum(p.numel() for p in ws.model.parameters())  # before LoRA adds any
    train_cfg = resolve_steps(cfg.train, len(ws.train_items))  # train.epochs -> optimizer steps

    # probe and select (Aletheia only)
    if cfg.method == "aletheia":
        if selection is None:
            selection = probe_and_select(cfg, ws, progress)
        if main and checkpoint is None:  # a resumed run keeps the probe it recorded
            write_probe_json(out / "probe.json", selection, model_path=ws.model_path, seed=cfg.seed)
        adapter = cfg.adapter
        if adapter.match_parameters:  # say what it did, also when it could not raise the rank
            adapter = matched_adapter(module_shapes(ws.model, arch), arch.attention, arch.mlp, selection.layers,
                                      cfg.adapter)
            log(f"match_parameters: MLP rank {cfg.adapter.mlp_rank} -> {adapter.mlp_rank} on "
                f"{len(selection.layers)} layers (at most standard LoRA's parameter count; fused MoE "
                "experts are not counted)")
        lora_cfg = aletheia_lora_config(arch, selection.layers, adapter)
        ranks = {"attention": adapter.attention_rank, "mlp": adapter.mlp_rank}
    else:
        lora_cfg = standard_lora_config(arch, layers_total, cfg.adapter)
        ranks = {"attention": cfg.adapter.standard_rank, "mlp": cfg.adapter.standard_rank}

    # evaluate the base model (LoRA's B matrices start at zero, so this is the base model)
    if baseline is None:
        log(f"evaluating the base model on {len(ws.eval_items)} held-out examples")
        baseline = evaluate(cfg, ws, ws.model, progress)

    # build the adapters; the seed fixes their initialisation
    set_seed(cfg.seed)
    model = apply_lora(ws.model, lora_cfg)
    n_trainable = trainable_parameters(model)
    adapted_layers = sorted({layer for layer, _ in found_adapters(model, arch.layers_pattern)})
    log(f"{cfg.method}: LoRA on {len(adapted_layers)}/{layers_total} layers, {n_trainable:,} trainable parameters")

    # train and evaluate, logged to the trackers (closed here, so their files are complete when the
    # staged folder is committed)
    names = cfg.train.tracker_names() if main else []
    with open_trackers(names, out, run_name="/".join(Path(cfg.output).parts[-2:])) as tracker:
        tracker.log_hparams({**cfg.to_dict(), "selected_layers": adapted_layers})
        if cfg.method == "aletheia":
            tracker.log_probe_scores(selection.scores, selection.layers)
        held_out = eval_batches(ws.eval_items, 8, ws.tokenizer.pad_token_id)
        set_seed(cfg.seed)
        with graceful_stop():  # SIGTERM/SIGINT: checkpoint at the step boundary, then stop
            result = train_lora(model, ws.train_items, train_cfg, cfg.seed, ws.tokenizer.pad_token_id,
                                metrics_path=out / "metrics.jsonl" if main else None, dtype=ws.dtype,
                                progress=progress and main, label=f"train ({cfg.method})",
                                checkpoint_dir=out / "checkpoints", resume_from=checkpoint,
                                tracker=tracker, evaluate=lambda: heldout_loss(model, held_out))
        if result.status == "failed":  # no adapter is saved: a diverged one must not look usable
            log(f"run failed: {result.failure['reason']}; no adapter saved")
        after = evaluate(cfg, ws, model, progress) if result.status == "completed" else {}
        tracker.log({"eval/loss_before": baseline.get("eval_loss"), "eval/loss": after.get("eval_loss"),
                     "eval/accuracy_before": baseline.get("accuracy"),
                     "eval/accuracy": after.get("accuracy")}, step=result.steps_done)

    # save
    # FSDP2 left each process a slice of the adapter: every process gathers it, the main one writes it
    whole = trainable_state(model) if result.status == "completed" and distributed.sharded(model) else None
    if main and result.status == "completed":
        model.save_pretrained(out, **({"state_dict": whole} if whole is not None else {}))
        if hasattr(ws.tokenizer, "save_pretrained"):  # AutoTokenizer.from_pretrained(RUN_DIR) works
            ws.tokenizer.save_pretrained(out)
    failure = result.failure or {}
    record = RunRecord(
        method=cfg.method, seed=cfg.seed, steps=train_cfg.steps, status=result.status,
        reason=failure.get("reason"), failed_step=failure.get("step"),
        model=cfg.model or "default", model_path=ws.model_path, family=arch.family,
        selector=cfg.probe.selector if cfg.method == "aletheia" else None,
        parameters=base_params, layers=layers_total, selected_layers=adapted_layers,
        trainable_params=n_trainable, ranks=ranks,
        steps_done=result.steps_done, train_seconds=result.train_seconds,
        median_step_seconds=result.median_step_seconds, tokens_per_second=result.tokens_per_second,
        final_loss=result.final_loss, loss_scale=result.loss_scale, processes=result.processes,
        resumed_from_step=result.resumed_from_step,
        peak_memory_bytes=result.peak_memory_bytes, peak_memory_kind=result.peak_memory_kind,
        padding_free=padding_free(ws.model),
        probe_seconds=selection.seconds if (selection and cfg.method == "aletheia") else None,
        eval_loss_before=baseline.get("eval_loss"), eval_loss=after.get("eval_loss"),
        accuracy_before=baseline.get("accuracy"), accuracy=after.get("accuracy"),
        eval_examples=len(ws.eval_items), train_examples=len(ws.train_items),
        device=str(ws.device), dtype=str(ws.dtype).replace("torch.", ""),
        torch_threads=torch.get_num_threads(), versions=package_versions(), git_revision=git_revision(),
        finished_at=timestamp(),
    )
    if main and "accuracy_samples" in after:
        write_json(out / "accuracy_samples.json", after["accuracy_samples"])
    if main:
        write_record(out / "summary.json", record)
    return record
