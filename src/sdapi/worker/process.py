"""Worker processes: `sdapi worker` itself, and the supervisor `sdapi serve` uses to run them."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

from sdapi.backends import open_backends
from sdapi.catalog.prompts import Translate
from sdapi.settings import Settings
from sdapi.worker.runner import Generator, Worker

log = logging.getLogger(__name__)

#: A crashed worker is restarted after this delay, doubled per crash in a row, capped.
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
#: A worker that ran this long before dying counts as healthy: its restart delay resets.
HEALTHY_RUN_S = 60.0
#: How long the supervisor waits for a stopping worker beyond its drain time (handing its jobs
#: back and closing take a moment) before it kills it (the leases then bring the work back).
STOP_GRACE_S = 10.0


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def served_models(settings: Settings) -> list[str]:
    """The models a worker claims jobs for: its `--model`s (the first is loaded at start), then
    the upscaler, loaded when the first super_resolution job comes (and evicted like a model)."""
    extra = [settings.upscaler] if settings.upscaler else []
    return list(dict.fromkeys([*settings.model, *extra]))


def run_worker(settings: Settings) -> None:
    """Serve jobs until SIGTERM/SIGINT; the job in hand is finished before exiting."""
    from sdapi.catalog.models import check_model_ref, check_upscaler_ref
    from sdapi.catalog.translators import check_translator_ref
    from sdapi.engine.cache import EngineCache, default_budget
    from sdapi.engine.engine import Engine
    from sdapi.engine.upscale import UpscaleEngine

    for model in settings.model:  # fail before joining the queue, not after
        check_model_ref(model)
    if settings.upscaler:
        check_upscaler_ref(settings.upscaler)
    if settings.translator:
        check_translator_ref(settings.translator)
    backends = open_backends(settings)
    device = resolve_device(settings.device)
    threads = settings.threads or None

    def engine_for(model: str) -> Generator:
        if model == settings.upscaler and model not in settings.model:
            return UpscaleEngine(model, settings.models_dir, device=device, threads=threads)
        return Engine(
            model, settings.models_dir, device=device, threads=threads, compile=settings.compile
        )

    budget = int(settings.model_memory * 2**30) or default_budget(device)
    worker = Worker(
        backends.queue,
        backends.images,
        EngineCache(engine_for, budget),
        served_models(settings),
        lease_s=settings.lease_seconds,
        device=device,
        max_batch=settings.max_batch,
        batch_wait=settings.batch_wait,
        fair_every_s=settings.affinity_wait,
        translate=_translate(settings, device),
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():  # a second signal: leave now; the lease brings the job back
            os._exit(1)
        log.info(
            "worker %s: stopping; the batch in hand has %.0f s to finish, else it goes back"
            " to the queue",
            worker.id,
            settings.drain_timeout,
        )
        stop.set()
        abandon = threading.Timer(settings.drain_timeout, worker.abandon.set)
        abandon.daemon = True
        abandon.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker.run(stop)
    finally:
        backends.close()


def _translate(settings: Settings, device: str) -> Translate | None:
    """The worker's translator for multi_lingual, loaded on the first prompt that needs it."""
    if not settings.translator:
        return None
    from sdapi.engine.translation import Translator

    translator = Translator(settings.translator, settings.models_dir, device)

    def translate(text: str) -> tuple[str, str, bool]:
        done = translator.translate(text)
        return done.text, done.language, done.translated

    return translate


def _die_with_parent() -> None:
    # Linux: the kernel sends SIGTERM to the worker if `sdapi serve` dies, even by SIGKILL,
    # so no orphan keeps working on a queue nobody supervises.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class WorkerSupervisor:
    """Runs `count` worker subprocesses and restarts any that dies, with backoff."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        for slot in range(self.count):
            self._spawn(slot)
        self._thread.start()

    def _spawn(self, slot: int) -> None:
        env = {**os.environ, **self.settings.as_env()}
        self._procs[slot] = subprocess.Popen(
            [sys.executable, "-m", "sdapi", "worker"],
            env=env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.info("started worker %d (pid %d)", slot, self._procs[slot].pid)  # type: ignore[union-attr]

    def _watch(self) -> None:
        delays = [RESTART_DELAY_S] * self.count
        started = [time.monotonic()] * self.count
        while not self._stopping.wait(0.5):
            for slot, proc in enumerate(self._procs):
                if proc is None or proc.poll() is None:
                    continue
                if time.monotonic() - started[slot] > HEALTHY_RUN_S:
                    delays[slot] = RESTART_DELAY_S
                log.error(
                    "worker %d exited with %s; restarting in %.0f s",
                    slot,
                    proc.returncode,
                    delays[slot],
                )
                if self._stopping.wait(delays[slot]):
                    return
                delays[slot] = min(delays[slot] * 2, MAX_RESTART_DELAY_S)
                started[slot] = time.monotonic()
                self._spawn(slot)

    def stop(self) -> None:
        """SIGTERM every worker (each finishes or hands back its batch within the drain time),
        then SIGKILL what outlives it and the grace."""
        self._stopping.set()
        live = self._live()
        for proc in live:
            proc.terminate()
        deadline = time.monotonic() + self.settings.drain_timeout + STOP_GRACE_S
        for proc in live:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()

    def kill(self) -> None:
        """Stop at once (a second signal): the workers' leases bring their jobs back."""
        self._stopping.set()
        for proc in self._live():
            proc.kill()

    def _live(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self._procs if p is not None and p.poll() is None]
