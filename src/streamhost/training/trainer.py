"""The trainer process: ``python -m streamhost.training.trainer JOB_DIR`` runs one fine-tuning job.

The platform writes ``JOB_DIR/job.json`` (the validated job), starts this process, and reads
``JOB_DIR/events.jsonl`` back; human-readable progress goes to stdout, which the platform keeps
as the job's log. Phases, reported as SageMaker's SecondaryStatus:

1. Downloading: fetch the base model and the channels, check every data line (a bad line fails
   the job here, naming it, before any training).
2. Training: transformers ``Trainer`` with a peft LoRA adapter (full fine-tuning when lora_r=0),
   progress every ``logging_steps`` (step, loss, tokens/s, ETA), eval loss on the validation
   data, checkpoints every ``save_steps``.
3. Uploading: save merged weights (or the adapter), the loss curve and metrics, pack model.tar.gz
   and copy it to ``S3OutputPath/<job>/output/``.

SIGTERM (StopTrainingJob, MaxRuntimeInSeconds) ends training after the current step; the weights
reached so far are saved and uploaded like a finished job's, and the outcome is "stopped".
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .events import EventWriter

JOB_FILE = "job.json"


class StopRequested(Exception):
    """SIGTERM arrived before training started: nothing to save."""


class _Job:
    """One run of the job in ``job_dir``: its spec, events, stop flag and history."""

    def __init__(self, job_dir: Path) -> None:
        self.dir = job_dir
        self.spec: dict[str, Any] = json.loads((job_dir / JOB_FILE).read_text())
        self.hp: dict[str, Any] = self.spec["hyperparameters"]
        self.events = EventWriter(job_dir)
        self.stop_requested = False
        self.history: list[dict[str, Any]] = []
        self.access: Any = None  # boto3 access to the job's S3 store (set while preparing)

    def say(self, message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)

    def status(self, secondary: str, message: str) -> None:
        self.say(message)
        self.events.emit("status", status=secondary, message=message)

    def check_stop(self) -> None:
        if self.stop_requested:
            raise StopRequested


# --------------------------------------------------------------------------- phases


def _prepare(job: _Job) -> tuple[Path, list, list]:
    """Downloading: the base model folder and the (train, validation) examples."""
    from streamhost.training import data as td

    from .inputs import artifact_store, fetch_channel, object_access, resolve_base_model

    job.access = object_access(job.spec)
    store = artifact_store(job.spec, job.access)
    channels: dict[str, str] = job.spec["channels"]
    job.status("Downloading", "Downloading input data")
    loaded: dict[str, list] = {}
    for name in ("train", "validation"):
        if name not in channels:
            continue
        folder = fetch_channel(store, channels[name])
        path = td.channel_file(folder, name)
        template = td.load_template(folder if folder.is_dir() else None) if job.hp["instruction_tuned"] else None
        loaded[name] = td.load_examples(path, job.hp["instruction_tuned"], template)
        job.say(f"channel {name}: {path.name}, {len(loaded[name])} examples")
    job.check_stop()
    job.status("Downloading", f"Downloading the base model {job.spec['model']}")
    base = resolve_base_model(store, job.spec["model"])
    job.check_stop()
    train, validation = loaded["train"], loaded.get("validation", [])
    if not validation:
        train, validation = td.split(train, job.hp["validation_split_ratio"], job.hp["train_data_split_seed"])
    return base, train, validation


def _load_model(job: _Job, base: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    if cuda:
        model = model.to("cuda")  # type: ignore[arg-type]  # transformers' decorated .to()
    hp = job.hp
    if hp["lora_r"] > 0:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=hp["lora_r"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"],
            target_modules="all-linear", task_type="CAUSAL_LM",
        )  # fmt: skip
        model = get_peft_model(model, config)  # type: ignore[assignment]  # a PeftModel wraps the model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    kind = f"LoRA r={hp['lora_r']}" if hp["lora_r"] > 0 else "full fine-tuning"
    job.say(f"model {base.name}: {total / 1e6:.1f}M parameters, {trainable / 1e6:.2f}M trainable ({kind}, {dtype}, "
            f"{'cuda' if cuda else 'cpu'})")  # fmt: skip
    return model, tokenizer


def collate(pad_id: int):
    """Pad a batch to its longest row: pad tokens get attention 0 and label -100."""
    import torch

    def collate_fn(rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = [r["input_ids"] + [pad_id] * (width - len(r["input_ids"])) for r in rows]
        labels = [r["labels"] + [-100] * (width - len(r["labels"])) for r in rows]
        mask = [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}

    return collate_fn


def _progress_callback(job: _Job, total_steps: int):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Progress lines + events; turns a stop request into ``should_training_stop``."""

        def __init__(self) -> None:
            self.started = time.monotonic()
            self.last_time = self.started
            self.last_tokens = 0
            self.tokens_per_second = 0.0

        def on_step_end(self, args, state, control, **kwargs):
            if job.stop_requested:
                control.should_training_stop = True
                control.should_save = False
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            now = time.monotonic()
            tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
            if "loss" in logs:
                span = now - self.last_time
                if span > 0 and tokens > self.last_tokens:
                    self.tokens_per_second = (tokens - self.last_tokens) / span
                self.last_time, self.last_tokens = now, tokens
                elapsed = now - self.started
                step = state.global_step
                eta = elapsed / step * (total_steps - step) if step else None
                point = {"step": step, "loss": float(logs["loss"]), "learning_rate": float(logs.get("learning_rate", 0)),
                         "epoch": float(logs.get("epoch", 0)), "tokens_per_second": round(self.tokens_per_second, 1),
                         "tokens": tokens, "eta_seconds": round(eta, 1) if eta is not None else None}  # fmt: skip
                job.history.append(point)
                job.events.emit("progress", max_steps=total_steps, **point)
                job.say(f"step {step}/{total_steps} loss {point['loss']:.4f} lr {point['learning_rate']:.2e} "
                        f"{point['tokens_per_second']:.0f} tokens/s ETA {_duration(eta)}")  # fmt: skip
            if "eval_loss" in logs:
                point = {"step": state.global_step, "eval_loss": float(logs["eval_loss"])}
                job.history.append(point)
                job.events.emit("eval", **point)
                job.say(f"step {state.global_step}/{total_steps} eval loss {point['eval_loss']:.4f}")

        def on_save(self, args, state, control, **kwargs):
            job.events.emit("checkpoint", step=state.global_step)
            job.say(f"checkpoint saved at step {state.global_step}")

    return Progress()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def plan_steps(hp: dict[str, Any], train_examples: int) -> int:
    """Optimizer steps the job will run: ``max_steps``, else epochs x steps per epoch."""
    per_step = hp["per_device_train_batch_size"] * hp["gradient_accumulation_steps"]
    steps_per_epoch = max(1, math.ceil(train_examples / per_step))
    return hp["max_steps"] if hp["max_steps"] > 0 else steps_per_epoch * hp["epoch"]


def training_arguments(hp: dict[str, Any], output_dir: Path, total_steps: int, with_eval: bool):
    """transformers' TrainingArguments for these hyperparameters (the benchmark's baseline uses the same)."""
    import torch
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=hp["epoch"],
        max_steps=hp["max_steps"],
        learning_rate=hp["learning_rate"],
        per_device_train_batch_size=hp["per_device_train_batch_size"],
        per_device_eval_batch_size=hp["per_device_train_batch_size"],
        gradient_accumulation_steps=hp["gradient_accumulation_steps"],
        warmup_steps=max(0, round(hp["warmup_ratio"] * total_steps)),
        weight_decay=hp["weight_decay"],
        lr_scheduler_type=hp["lr_scheduler_type"],
        seed=hp["seed"],
        data_seed=hp["seed"],
        logging_steps=hp["logging_steps"],
        save_strategy="steps",
        save_steps=hp["save_steps"],
        save_total_limit=1,
        save_only_model=True,
        eval_strategy="steps" if with_eval else "no",
        eval_steps=max(1, min(hp["save_steps"], total_steps)),
        report_to="none",
        disable_tqdm=True,
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def _train(job: _Job, model, tokenizer, train_rows, eval_rows) -> tuple[Any, dict[str, float]]:
    from transformers import Trainer

    hp = job.hp
    total_steps = plan_steps(hp, len(train_rows))
    args = training_arguments(hp, job.dir / "checkpoints", total_steps, bool(eval_rows))
    trainer = Trainer(
        model=model, args=args, train_dataset=train_rows, eval_dataset=eval_rows or None,
        data_collator=collate(tokenizer.pad_token_id), callbacks=[_progress_callback(job, total_steps)],
    )  # fmt: skip
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our Progress lines replace its raw dicts
    job.status("Training", f"Training: {len(train_rows)} examples, {len(eval_rows)} for eval, {total_steps} steps")
    started, cpu_started = time.monotonic(), _cpu_seconds()
    result = trainer.train()
    seconds = time.monotonic() - started
    cpu_seconds = _cpu_seconds() - cpu_started
    state = trainer.state
    metrics: dict[str, float] = {
        "train_loss": float(result.training_loss),
        "train_runtime": round(seconds, 3),
        "steps": float(state.global_step),
        "epoch": float(state.epoch or 0),
        "tokens": float(state.num_input_tokens_seen or 0),
        "train_tokens_per_second": round((state.num_input_tokens_seen or 0) / seconds, 2) if seconds else 0.0,
        # CPU time of this process while training: on a shared machine, tokens per CPU second
        # compares runs whatever else competed for the cores (wall-clock tokens/s does not).
        "train_cpu_seconds": round(cpu_seconds, 3),
    }
    last = [h["loss"] for h in job.history if "loss" in h]
    if last:
        metrics["final_train_loss"] = last[-1]
    if eval_rows:
        evals = [h for h in job.history if "eval_loss" in h]
        if evals and evals[-1]["step"] == state.global_step:
            metrics["eval_loss"] = evals[-1]["eval_loss"]
        elif not job.stop_requested:
            evaluation = trainer.evaluate()
            metrics["eval_loss"] = float(evaluation["eval_loss"])
            job.history.append({"step": state.global_step, "eval_loss": metrics["eval_loss"]})
            job.events.emit("eval", step=state.global_step, eval_loss=metrics["eval_loss"])
            job.say(f"final eval loss {metrics['eval_loss']:.4f}")
        elif evals:
            metrics["eval_loss"] = evals[-1]["eval_loss"]
    return trainer.model, metrics


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _save(job: _Job, model, tokenizer, base: Path, metrics: dict[str, float]) -> list[Path]:
    """Uploading: model folder + curve + metrics -> model.tar.gz -> the output path."""
    import torch

    from . import outputs

    job.status("Uploading", "Saving the model and uploading the artifacts")
    folder = job.dir / "model"
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    hp = job.hp
    if hp["lora_r"] > 0 and hp["merge_weights"]:
        model = model.merge_and_unload()
    if hp["lora_r"] > 0 and not hp["merge_weights"]:
        model.save_pretrained(folder)
        (folder / outputs.BASE_REFERENCE).write_text(json.dumps({"model": job.spec.get("base_reference") or str(base)}))
    else:
        config = json.loads((base / "config.json").read_text())
        base_dtype = config.get("dtype") or config.get("torch_dtype")
        if base_dtype in ("bfloat16", "float16"):
            model = model.to(getattr(torch, base_dtype))  # ship in the base's precision (half the size of fp32)
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    curve = outputs.plot_loss_curve(job.history, folder / outputs.LOSS_CURVE, f"{job.spec['name']}")
    outputs.write_metrics(folder, metrics, job.history)
    archive = outputs.write_archive(folder, job.dir / outputs.MODEL_ARCHIVE)
    files = [archive] + ([curve] if curve else [])
    prefix = outputs.output_prefix(job.spec["output_path"], job.spec["name"])
    uris = outputs.upload(files, prefix, job.access, job.spec.get("artifact_roots"))
    job.say(f"artifacts: {', '.join(uris)}")
    return files


# --------------------------------------------------------------------------- main


def run(job_dir: Path) -> int:
    job = _Job(job_dir)

    parent = os.getppid()

    def on_term(_signum, _frame) -> None:
        if os.getppid() != parent:  # the parent-death signal: the platform died, nobody will collect a result
            print("the platform is gone: exiting without saving", flush=True)
            os._exit(143)
        if not job.stop_requested:
            job.stop_requested = True
            job.say("stop requested: ending after the current step")

    signal.signal(signal.SIGTERM, on_term)
    try:
        from .data import DataError

        try:
            base, train, validation = _prepare(job)
        except DataError as exc:
            job.events.emit("done", outcome="failed", reason=f"ClientError: {exc}")
            job.say(f"failed: {exc}")
            return 1
        model, tokenizer = _load_model(job, base)
        job.check_stop()
        from .data import tokenize

        max_length = job.hp["max_input_length"]
        train_rows = tokenize(train, tokenizer, max_length)
        eval_rows = tokenize(validation, tokenizer, max_length)
        if not train_rows:
            reason = f"ClientError: every training example's prompt fills max_input_length={max_length}; raise it"
            job.events.emit("done", outcome="failed", reason=reason)
            return 1
        model, metrics = _train(job, model, tokenizer, train_rows, eval_rows)
        stopped = job.stop_requested
        _save(job, model, tokenizer, base, metrics)
        outcome = "stopped" if stopped else "completed"
        job.events.emit("done", outcome=outcome, metrics=metrics)
        job.say(f"{outcome}: " + ", ".join(f"{k}={v:g}" for k, v in metrics.items()))
        return 0
    except StopRequested:
        job.events.emit("done", outcome="stopped", metrics={}, reason="Stopped before training started")
        job.say("stopped before training started: no model to save")
        return 0
    except Exception as exc:
        traceback.print_exc()
        job.events.emit("done", outcome="failed", reason=f"AlgorithmError: {type(exc).__name__}: {exc}")
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m streamhost.training.trainer JOB_DIR", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
