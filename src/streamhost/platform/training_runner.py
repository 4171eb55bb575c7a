"""Runs training jobs as supervised trainer processes and keeps their records current.

One asyncio task per job: write ``job.json``, start ``python -m streamhost.training.trainer``
(through the same parent-death shim as model servers, so a killed platform leaves no trainer
behind), follow its ``events.jsonl`` into SecondaryStatus, its transitions and the Prometheus
gauges, enforce MaxRuntimeInSeconds, and turn its end into Completed / Stopped / Failed.

Stopping (StopTrainingJob, or MaxRuntimeInSeconds reached) sends SIGTERM: the trainer ends after
its current step, saves and uploads the weights reached so far, and the job ends Stopped with
those artifacts. A trainer that does not finish within ``stop_grace`` is killed (Stopped, no
artifact, saying so).

**Restart policy**: a job that was running when the platform died is marked Failed, with a reason
saying so and where its last checkpoint is; it is not resumed (a resumed job would silently mix
two runs' timing and metrics). A trainer that had already reported its end is recorded as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client import Gauge

from streamhost.training.events import read_events

from .instances import _SHIM, INSTANCE_MARKER, kill_orphan, read_tail
from .settings import PlatformSettings
from .supervisor import _model_server_setting
from .training_store import TrainingJobStore

log = logging.getLogger("streamhost.training")

ACTIVE = ("InProgress", "Stopping")
POLL_SECONDS = 0.5
LOG_FILE = "training.log"
_TERMINAL_SECONDARY = {"completed": ("Completed", "Completed"), "stopped": ("Stopped", "Stopped"),
                       "failed": ("Failed", "Failed")}  # fmt: skip


class TrainingGauges:
    """Live training figures on the platform's ``/metrics``, labelled by job."""

    def __init__(self, registry: Any) -> None:
        def gauge(name: str, text: str) -> Gauge:
            return Gauge(name, text, ["job"], registry=registry)

        self.step = gauge("streamhost_training_step", "Optimizer steps done by a training job.")
        self.max_steps = gauge("streamhost_training_max_steps", "Optimizer steps a training job will run.")
        self.loss = gauge("streamhost_training_loss", "Latest training loss of a job.")
        self.eval_loss = gauge("streamhost_training_eval_loss", "Latest eval loss of a job.")
        self.tokens_per_second = gauge(
            "streamhost_training_tokens_per_second", "Training throughput (non-padding tokens/s)."
        )
        self.eta = gauge("streamhost_training_eta_seconds", "Estimated seconds until a job's last step.")


def now() -> float:
    return time.time()


class TrainingRunner:
    def __init__(self, store: TrainingJobStore, settings: PlatformSettings, gauges: TrainingGauges,
                 placement: Any = None, artifacts: Any = None) -> None:  # fmt: skip
        self.store = store
        self.settings = settings
        self.gauges = gauges
        self.placement = placement  # a RayPlacement: trainers run as Ray actors (training_ray); else processes here
        self.artifacts = artifacts
        self.root = settings.state_dir / "training"
        self.stop_grace = 300.0  # saving + packing a multi-GB model takes minutes
        self._tasks: dict[str, asyncio.Task] = {}
        self._procs: dict[str, Any] = {}  # asyncio.subprocess.Process, or training_ray.RayTrainer (same surface)
        self._stop_reason: dict[str, str] = {}

    def job_dir(self, name: str) -> Path:
        """``<state>/training/<job>``, named exactly as the job (the SDK finds its log stream by that name).

        Callers pass the stored name: names are unique regardless of case, so no two jobs share a folder.
        """
        return self.root / name

    # ------------------------------------------------------------------ status bookkeeping

    def advance(self, name: str, secondary: str, message: str, status: str | None = None,
                only_from: tuple[str, ...] | None = ACTIVE, **fields: Any) -> bool:  # fmt: skip
        """Move to SecondaryStatus ``secondary`` (closing the previous transition); ``status`` too if given."""
        record = self.store.get(name)
        if record is None:
            return False
        transitions = list(record.transitions)
        stamp = now()
        if transitions and transitions[-1]["Status"] == secondary:
            transitions[-1]["StatusMessage"] = message
        else:
            if transitions and "EndTime" not in transitions[-1]:
                transitions[-1]["EndTime"] = stamp
            transitions.append({"Status": secondary, "StartTime": stamp, "StatusMessage": message})
        if status in ("Completed", "Failed", "Stopped"):
            transitions[-1]["EndTime"] = stamp
        values: dict[str, Any] = {"secondary_status": secondary, "transitions": transitions, **fields}
        if status is not None:
            values["status"] = status
        return self.store.update(name, only_from=only_from, **values)

    # ------------------------------------------------------------------ lifecycle

    def start(self, name: str, spec: dict[str, Any]) -> None:
        """Run the job in the background (CreateTrainingJob answers at once)."""
        key = name.lower()
        task = asyncio.ensure_future(self._run(name, spec))
        self._tasks[key] = task

        def forget(done: asyncio.Task) -> None:
            if self._tasks.get(key) is done:
                del self._tasks[key]

        task.add_done_callback(forget)

    def stop(self, name: str, reason: str = "Stopped") -> None:
        """SIGTERM the trainer; the job's task records the outcome when it exits."""
        self._stop_reason[name.lower()] = reason
        proc = self._procs.get(name.lower())
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not _model_server_setting(k) or k.startswith("AWS_")}
        env.update({"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
                    "STREAMHOST_PLATFORM_PID": str(os.getpid()),
                    INSTANCE_MARKER: str(self.settings.state_dir.resolve())})  # fmt: skip
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env.update(self._s3_keys())
        return env

    def _s3_keys(self) -> dict[str, str]:
        """The keys the trainer signs its S3 calls with: the external store's, else ones the platform accepts."""
        s = self.settings
        if s.s3_endpoint_url:
            if s.s3_access_key_id and s.s3_secret_access_key:
                return {"AWS_ACCESS_KEY_ID": s.s3_access_key_id, "AWS_SECRET_ACCESS_KEY": s.s3_secret_access_key}
            return {}
        if s.auth:
            from .auth import load_secrets

            secrets = load_secrets(s.credentials_file)
            if secrets:
                key, secret = next(iter(secrets.items()))
                return {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
        if os.environ.get("AWS_ACCESS_KEY_ID"):
            return {}
        return {"AWS_ACCESS_KEY_ID": "streamhost", "AWS_SECRET_ACCESS_KEY": "streamhost"}  # loopback: unchecked

    @property
    def on_ray(self) -> bool:
        return getattr(self.placement, "kind", "local") == "ray"

    async def _start_on_ray(self, name: str, spec: dict[str, Any], folder: Path) -> Any:
        """The trainer as a Ray actor with the job's resources; None (the job Failed) if it cannot run there."""
        from .training_ray import RayTrainer, TrainingPlacementError

        record = self.store.get(name)
        resource_config = (record.request if record else {}).get("ResourceConfig")
        with open(folder / LOG_FILE, "ab") as logfile:
            logfile.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting training job {name} on Ray\n".encode())
        env = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **self._s3_keys()}
        try:
            return await RayTrainer.launch(name, spec, folder, env, resource_config, self.placement, self.artifacts)
        except TrainingPlacementError as exc:
            reason = str(exc)
            with open(folder / LOG_FILE, "ab") as logfile:
                logfile.write(f"{reason}\n".encode())
            self.advance(name, "Failed", "Training job failed", status="Failed", failure_reason=reason, ended=now())
            log.warning("training job %s: %s", name, reason)
            return None

    async def _run(self, name: str, spec: dict[str, Any]) -> None:
        folder = self.job_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "job.json").write_text(json.dumps(spec, indent=1))
        log_path = folder / LOG_FILE
        if self.on_ray:
            proc = await self._start_on_ray(name, spec, folder)
            if proc is None:
                return
            await self._supervise(name, spec, folder, proc)
            return
        try:
            with open(log_path, "ab") as logfile:
                logfile.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting training job {name}\n".encode())
                logfile.flush()
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", _SHIM, sys.executable, "-m", "streamhost.training.trainer", str(folder),
                    stdin=asyncio.subprocess.DEVNULL, stdout=logfile, stderr=asyncio.subprocess.STDOUT,
                    env=self._env(), start_new_session=True,
                )  # fmt: skip
        except OSError as exc:
            self.advance(
                name,
                "Failed",
                f"could not start the trainer: {exc}",
                status="Failed",
                failure_reason=str(exc),
                ended=now(),
            )
            return
        await self._supervise(name, spec, folder, proc)

    async def _supervise(self, name: str, spec: dict[str, Any], folder: Path, proc: Any) -> None:
        """Follow a started trainer (local process or Ray actor) to its end, then record the outcome."""
        key = name.lower()
        self._procs[key] = proc
        self.store.update(name, pid=proc.pid, started=now())
        if key in self._stop_reason:  # stopped before the process existed
            self.stop(name, self._stop_reason[key])
        try:
            await self._follow(name, proc, folder, float(spec["max_runtime"]))
        finally:
            self._procs.pop(key, None)
            self._stop_reason.pop(key, None)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def _follow(self, name: str, proc: Any, folder: Path, max_runtime: float) -> None:
        key = name.lower()
        offset = 0
        started = time.monotonic()
        term_sent_at: float | None = None
        done: dict[str, Any] | None = None
        while True:
            exited = False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), POLL_SECONDS)
                exited = True
            events, offset = read_events(folder, offset)
            for event in events:
                if event["type"] == "done":
                    done = event
                else:
                    self._on_event(name, event)
            if exited:
                break
            if key not in self._stop_reason and time.monotonic() - started > max_runtime:
                log.warning("training job %s reached MaxRuntimeInSeconds (%g s); stopping it", name, max_runtime)
                self.request_stop(name, "MaxRuntimeExceeded",
                                  f"MaxRuntimeInSeconds ({max_runtime:g} s) reached: stopping after the current step")  # fmt: skip
            if key in self._stop_reason and term_sent_at is None:
                term_sent_at = time.monotonic()
            if term_sent_at is not None and time.monotonic() - term_sent_at > self.stop_grace:
                log.warning("training job %s did not stop within %g s; killing it", name, self.stop_grace)
                proc.kill()
        self._finish(name, proc.returncode, done, folder)

    def request_stop(self, name: str, secondary: str, message: str) -> bool:
        """InProgress -> Stopping (SecondaryStatus ``secondary``), then SIGTERM."""
        if not self.advance(name, secondary, message, status="Stopping", only_from=("InProgress",)):
            return False
        self.stop(name, secondary)
        return True

    def _on_event(self, name: str, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "status":
            record = self.store.get(name)
            if record is not None and record.status == "InProgress":
                self.advance(name, event["status"], event.get("message", ""), only_from=("InProgress",))
        elif kind == "progress":
            g = self.gauges
            g.step.labels(name).set(event.get("step", 0))
            g.max_steps.labels(name).set(event.get("max_steps", 0))
            g.loss.labels(name).set(event.get("loss", 0))
            g.tokens_per_second.labels(name).set(event.get("tokens_per_second", 0))
            if event.get("eta_seconds") is not None:
                g.eta.labels(name).set(event["eta_seconds"])
        elif kind == "eval":
            self.gauges.eval_loss.labels(name).set(event.get("eval_loss", 0))

    def _finish(self, name: str, returncode: int | None, done: dict[str, Any] | None, folder: Path) -> None:
        """Record how the job ended, from its ``done`` event (or the lack of one)."""
        record = self.store.get(name)
        if record is None or record.status not in ACTIVE:
            return
        stop_secondary = self._stop_reason.get(name.lower())
        metrics = _metric_list(done.get("metrics") or {}) if done else []
        if done and done.get("outcome") == "completed" and stop_secondary is None:
            self.advance(name, "Completed", "Training job completed", status="Completed", metrics=metrics, ended=now())
        elif done and done.get("outcome") in ("completed", "stopped"):
            has_model = bool(done.get("metrics"))
            message = "Training job stopped; the weights reached so far were saved" if has_model else (
                done.get("reason") or "Training job stopped before training started: no model was saved")  # fmt: skip
            final = "MaxRuntimeExceeded" if stop_secondary == "MaxRuntimeExceeded" else "Stopped"
            if final == "MaxRuntimeExceeded":
                message = "Stopped at MaxRuntimeInSeconds; " + message[0].lower() + message[1:]
            self.advance(name, final, message, status="Stopped", metrics=metrics, ended=now())
        elif done and done.get("outcome") == "failed":
            self.advance(name, "Failed", "Training job failed", status="Failed", failure_reason=done.get("reason"),
                         metrics=metrics, ended=now())  # fmt: skip
        elif stop_secondary is not None:
            self.advance(name, "Stopped", f"The trainer did not stop within {self.stop_grace:g} s and was killed; "
                         "no model was saved", status="Stopped", ended=now())  # fmt: skip
        else:
            tail = read_tail(folder / LOG_FILE)
            reason = (
                f"AlgorithmError: the trainer process exited with code {returncode}. Last lines of its log:\n{tail}"
            )
            self.advance(name, "Failed", "Training job failed", status="Failed", failure_reason=reason, ended=now())
        log.info("training job %s ended: %s", name, (self.store.get(name) or record).status)

    # ------------------------------------------------------------------ platform start / stop

    def recover(self) -> None:
        """After a restart: jobs that were running are Failed (see the module docstring), saying why."""
        owner = str(self.settings.state_dir.resolve())
        for record in self.store.list():
            if record.status not in ACTIVE:
                continue
            if record.pid:
                kill_orphan(record.pid, owner)
            folder = self.job_dir(record.name)
            events, _ = read_events(folder)
            done = next((e for e in reversed(events) if e["type"] == "done"), None)
            if done is not None:
                self._finish(record.name, 0, done, folder)
                continue
            checkpoint = _last_checkpoint(folder)
            on_ray = next((e["message"] for e in events if e["type"] == "status"
                           and str(e.get("message", "")).startswith("Running on Ray node")), None)  # fmt: skip
            if on_ray:
                where = f" Its checkpoints, if any, are in its job folder on the Ray node it ran on ({on_ray})."
            elif checkpoint:
                where = f" Its last checkpoint ({checkpoint.name}) is in {checkpoint}."
            else:
                where = " It had saved no checkpoint."
            reason = (f"The platform restarted while this job was {record.secondary_status}; a job is not resumed after "
                      f"a restart: start a new training job.{where}")  # fmt: skip
            self.advance(record.name, "Failed", reason, status="Failed", failure_reason=reason, ended=now())
            log.warning("training job %s: %s", record.name, reason)

    async def shutdown(self) -> None:
        """Platform stopping: running jobs end Failed (they cannot outlive the platform)."""
        for key, proc in list(self._procs.items()):
            record = self.store.get(key)
            if record is not None and record.status in ACTIVE:
                reason = "The platform shut down while this job was running; start a new training job."
                self.advance(key, "Failed", reason, status="Failed", failure_reason=reason, ended=now())
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _metric_list(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    stamp = now()
    return [{"MetricName": k, "Value": float(v), "Timestamp": stamp} for k, v in metrics.items()
            if isinstance(v, (int, float))]  # fmt: skip


def _last_checkpoint(folder: Path) -> Path | None:
    checkpoints = sorted((folder / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[-1]))
    return checkpoints[-1] if checkpoints else None
