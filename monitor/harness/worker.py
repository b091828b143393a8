"""The benchmark worker: runs in its own spawned process, the only place torch is imported.

Started by runner.py as `python -m monitor.harness.worker`, it reads one job on stdin and
answers with JSON events on its original stdout (see protocol.py). Anything the model prints goes to
stderr, which the runner keeps for the error text of a failed run. A crash, hang or memory blow-up
here cannot take the parent with it; the runner turns it into a stored failed run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import faulthandler
import functools
import json
import math
import os
import platform
import signal
import socket
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from monitor.core import holdout
from monitor.core.catalog import cuda_index
from monitor.core.import_paths import resolve
from monitor.core.runs import EnvFingerprint, HostCondition, RunMetrics
from monitor.core.workloads import TrainSpec
from monitor.harness import (
    candidates,
    collectors,
    host_probe,
    load,
    process_memory,
    profiling,
    reference,
    sampling,
    train_step,
    variants,
)
from monitor.harness.protocol import (
    REFERENCE_LABEL,
    ArtifactRef,
    BenchmarkJob,
    CandidatesJob,
    CompareJob,
    FreezeJob,
    InputTensor,
    Job,
    PrepareJob,
    PrepareReport,
    ProfileJob,
    Subject,
    SubjectResult,
    TrainCompareJob,
    WorkerJob,
    WorkerResult,
    read_job,
)


class DeviceUnavailable(RuntimeError):
    """The model's device is not one that torch can run on in this host."""


class Channel:
    """The protocol stream back to the runner, with throttled progress events."""

    def __init__(self, stream: IO[str]):
        self._stream = stream
        self._last_progress = 0.0

    def send(self, event: dict[str, Any]) -> None:
        self._stream.write(json.dumps(event) + "\n")
        self._stream.flush()

    def progress(self, phase: str, samples: int) -> None:
        now = time.monotonic()
        if phase == "sampling" and now - self._last_progress < 1.0:
            return
        self._last_progress = now
        self.send({"event": "progress", "phase": phase, "samples": samples})


def build_inputs(
    subject: Subject, batch_size: int, device: str, seed: int = 0
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Example inputs as (args, kwargs) for the model call, on the model's device; `seed` draws
    another batch of the same shapes (an inputs factory gives what it gives)."""
    import torch

    if subject.inputs_factory:
        made = resolve(subject.inputs_factory)(batch_size)
        if isinstance(made, dict):
            return (), {k: _to(v, device) for k, v in made.items()}
        if isinstance(made, (tuple, list)):
            return tuple(_to(v, device) for v in made), {}
        return (_to(made, device),), {}
    generator = torch.Generator().manual_seed(seed)
    return tuple(_random_tensor(spec, generator).to(device) for spec in subject.inputs or []), {}


def _to(value: Any, device: str) -> Any:
    return value.to(device) if hasattr(value, "to") else value


def _random_tensor(spec: InputTensor, generator: Any) -> Any:
    import torch

    dtype = getattr(torch, spec.dtype)
    if dtype.is_floating_point:
        return torch.randn(spec.shape, generator=generator).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, spec.shape, generator=generator).bool()
    low = 0 if spec.low is None else spec.low
    high = low + 2 if spec.high is None else spec.high
    return torch.randint(low, high, spec.shape, generator=generator, dtype=dtype)


def accuracy(model: Any, eval_path: str, device: str, held_out: float | None = None) -> float:
    """Top-1 accuracy over the (inputs, labels) batches the eval callable yields; with `held_out`, over
    that share of them only (the rest trained a student: core/holdout.py)."""
    correct = total = 0
    batches = resolve(eval_path)()
    for inputs, labels in batches if held_out is None else holdout.held_out(batches, held_out):
        args = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
        out = model(*(_to(a, device) for a in args))
        if isinstance(out, (tuple, list)):
            out = out[0]
        labels = _to(labels, device)
        correct += int((out.argmax(dim=-1) == labels).sum())
        total += int(labels.numel())
    if total == 0:
        share = "" if held_out is None else f" in its held-out share ({held_out:g} of the batches)"
        raise ValueError(f"eval {eval_path} yielded no labelled examples{share}")
    return correct / total


def _gpu_figures(metrics: RunMetrics, details: dict[str, Any], gpu: dict[str, Any] | None, calls: int) -> None:
    """NVML's utilisation, power and energy per call (over `calls` calls) into the run, when it was read."""
    if gpu is None:
        return
    metrics.gpu_util_pct = gpu["gpu_util_pct"]
    metrics.gpu_power_w = gpu["gpu_power_w"]
    if gpu["energy_j"] is not None and calls:
        metrics.energy_j_per_inference = gpu["energy_j"] / calls
    details["energy_source"] = gpu["energy_source"]


class Prepared:
    """A subject's model (built, or loaded from its artifact), inputs and the call the sampler times.

    `inputs` (args, kwargs) feeds it the same inputs as another subject timed beside it.
    """

    def __init__(
        self, subject: Subject, job: Job, model: Any = None,
        inputs: tuple[tuple[Any, ...], dict[str, Any]] | None = None,
    ):
        self.subject = subject
        self.args, self.kwargs = inputs if inputs is not None else build_inputs(subject, job.batch_size, job.device)
        if model is not None:
            self.model = model
        elif subject.artifact is not None:
            self.model = reference.load(subject.artifact, job.device)
        elif subject.variant is not None and not variants.needs_base(subject.variant):
            # A distilled variant is its student: the factory's model (the teacher) is not built.
            self.model = variants.build_variant(None, subject.variant, self.args, self.kwargs, job.device)
        else:
            model = resolve(subject.factory)()
            if not hasattr(model, "eval") or not callable(model):
                raise TypeError(f"{subject.factory} returned {type(model).__name__}, not a torch.nn.Module")
            model = model.eval().to(job.device)
            if subject.variant is not None and (subject.variant.steps or subject.variant.weights_path):
                model = variants.build_variant(model, subject.variant, self.args, self.kwargs, job.device)
            self.model = model
        self.call: Callable[[], Any] = served_call(self.model, self.args, self.kwargs)


def _runtime_hook(model: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """What a runtime variant's hook `name` gives for these inputs (transforms/runtimes.py: how its
    runtime serves it, measures its memory, profiles it), or None where the model has no such hook."""
    hook = getattr(model, name, None)
    return hook(args, kwargs) if hook is not None else None


def _memory_call(prepared: Prepared) -> Callable[[], Any]:
    """The call whose peak memory is the subject's: the timed call, or for a runtime that keeps a call's
    workspace between calls (ONNX Runtime's arena), its `cold_call`, on a session without that arena."""
    call = _runtime_hook(prepared.model, "cold_call", prepared.args, prepared.kwargs)
    return call if call is not None else prepared.call


def _own_profiler(prepared: Prepared) -> profiling.OwnProfiler | None:
    """The runtime's own operator profiler, for a model that runs where torch's profiler sees nothing
    (`op_profiler`: ONNX Runtime's), else None."""
    return _runtime_hook(prepared.model, "op_profiler", prepared.args, prepared.kwargs)  # type: ignore[no-any-return]


def served_call(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[[], Any]:
    """What a timing calls: a runtime variant as its runtime serves it, where the model says how
    (`served_call`: an ONNX Runtime session fed ready arrays), else the model called on the inputs."""
    served = _runtime_hook(model, "served_call", args, kwargs)
    return served if served is not None else lambda: model(*args, **kwargs)


def _freeze(live: Prepared, job: FreezeJob) -> tuple[ArtifactRef, Prepared]:
    """Freeze the live model, then load the copy back as a subject of its own, timed beside it."""
    frozen = reference.freeze(live.model, live.args, live.kwargs, job.freeze_dir, live.subject.factory)
    # No accuracy for the copy: it is specialised to the example inputs' shapes, and the eval batches
    # have their own (an exported program refuses any other batch size).
    copy = dataclasses.replace(live.subject, label=REFERENCE_LABEL, artifact=frozen, eval=None)
    return frozen, Prepared(copy, job)


def _build_candidates(
    current: Prepared, job: CandidatesJob, progress: Callable[[str, int], None]
) -> tuple[list[Any], list[Prepared]]:
    """Build the job's candidates of the current variant; their reports and the ones to time."""
    subject = current.subject
    inputs = [(current.args, current.kwargs)]
    if subject.inputs_factory is None:
        seeds = range(1, candidates.FIDELITY_BATCHES)
        inputs += [build_inputs(subject, job.batch_size, job.device, seed) for seed in seeds]
    calibration: list[tuple[Any, ...]] | None
    if subject.eval:
        calibration = []
        for batch, _labels in resolve(subject.eval)():
            batch = batch if isinstance(batch, (tuple, list)) else (batch,)
            calibration.append(tuple(_to(a, job.device) for a in batch))
            if len(calibration) >= candidates.CALIBRATION_BATCHES:
                break
    elif current.kwargs:
        calibration = None  # keyword inputs: the recipe calibrates on the example (args, kwargs)
    else:
        calibration = [args for args, _ in inputs]
    built = candidates.build_all(job, current.model, inputs, calibration, resolve, progress)
    timed = [
        Prepared(candidates.relabel(subject, report.label, report.variant), job, model)
        for report, model in built
        if model is not None and report.variant is not None
    ]
    return [report for report, _ in built], timed


def _load_reference(live: Prepared, job: BenchmarkJob) -> tuple[Prepared | None, str | None]:
    """The job's frozen reference, loaded and checked against its frozen output, fed the live model's
    inputs; or why it cannot be timed (the run then measures absolutely and says so)."""
    assert job.reference is not None and job.reference.artifact is not None
    try:
        copy = Prepared(job.reference, job, inputs=(live.args, live.kwargs))
        reference.verify(job.reference.artifact, copy.model, job.device)
    except Exception as exc:  # noqa: BLE001 - any failure to load or reproduce means: reference lost
        traceback.print_exc()
        return None, reference.short_reason(exc)
    return copy, None


def _relative_metrics(metrics: RunMetrics, inter: sampling.Interleaved, ref: SubjectResult) -> None:
    """Fill the live subject's relative reading: its ratio to the reference, per round, and the p99s'."""
    ratio = inter.ratio(0, 1)
    metrics.rel_to_reference = ratio["ratio_p50"]
    if ratio["ratio_ci95"] is not None:
        metrics.rel_to_reference_low, metrics.rel_to_reference_high = ratio["ratio_ci95"]
    metrics.reference_p50_ms = ref.metrics.latency_ms_p50
    metrics.reference_p99_ms = ref.metrics.latency_ms_p99
    if metrics.latency_ms_p99 and ref.metrics.latency_ms_p99:
        metrics.rel_p99_to_reference = metrics.latency_ms_p99 / ref.metrics.latency_ms_p99


def _subject_result(prepared: Prepared, sampled: sampling.Sampled, job: Job) -> SubjectResult:
    import torch

    metrics: RunMetrics = sampling.latency_metrics(sampled.samples_ns, job.batch_size)
    if math.isfinite(sampled.ci_rel):
        metrics.ci95_rel = sampled.ci_rel  # drift-aware (block medians), not the i.i.d. sample CI
    metrics.params, metrics.model_size_mb = collectors.model_size(prepared.model)
    metrics.peak_rss_mb = round(process_memory.peak_rss_mb(), 2)
    if job.device.startswith("cuda"):
        metrics.cuda_peak_mem_mb = torch.cuda.max_memory_allocated(torch.device(job.device)) / 2**20
    details = sampled.details()
    _gpu_figures(metrics, details, sampled.window, sampled.executed)
    if prepared.subject.eval:
        metrics.accuracy = accuracy(prepared.model, prepared.subject.eval, job.device, prepared.subject.eval_holdout)
        if prepared.subject.eval_holdout is not None:
            details["accuracy_on"] = f"the held-out {prepared.subject.eval_holdout:g} of the eval batches"
    return SubjectResult(
        label=prepared.subject.label,
        metrics=metrics,
        samples_ms=[s / 1e6 for s in sampled.samples_ns],
        flags=sampled.flags,
        details=details,
    )


@dataclass(slots=True)
class Session:
    """What a timing job set up before any model code ran: NVML (closed when the job ends), the
    environment the parent was told, and the CUDA synchronise each timed call ends with."""

    nvml: collectors.Nvml | None
    env: EnvFingerprint
    sync: Callable[[], None] | None


@dataclass(slots=True)
class Timing:
    """What one interleaved measurement gave: the host's condition, each subject's result, and the
    ratios of the others to the first (None when one subject, or a reference, was timed)."""

    host: HostCondition
    results: list[SubjectResult]
    comparison: dict[str, Any] | None

    def result(self, env: EnvFingerprint, **parts: Any) -> WorkerResult:
        """The worker's answer for this measurement, with what the job's mode adds (`parts`)."""
        return WorkerResult(env=env, host=self.host, subjects=self.results, comparison=self.comparison, **parts)


def run_prepare(job: PrepareJob, channel: Channel) -> WorkerResult:
    """Run the model's prepare step (a download, a training, a cache to fill), timed as a whole and
    nothing else: its cost is reported, and the benchmarks after it find the work done."""
    env = EnvFingerprint(python=platform.python_version(), host=socket.gethostname())
    channel.send({"event": "started", "env": env.to_dict(), "pid": os.getpid()})
    channel.progress("prepare", 0)
    started = time.perf_counter()
    resolve(job.prepare)()
    seconds = time.perf_counter() - started
    report = PrepareReport(seconds=round(seconds, 3), peak_rss_mb=round(process_memory.peak_rss_mb(), 2))
    return WorkerResult(env=env, host=HostCondition(), subjects=[], prepared=report)


def run_benchmark(job: BenchmarkJob, channel: Channel) -> WorkerResult:
    """A scheduled run: the model, with its frozen reference beside it when the job names one; or its
    training step, or its calls under concurrent load, when the job asks for those."""
    if job.train_step is not None:
        return _run_train_step(job, channel)
    if job.load is not None:
        return _run_load(job, channel)
    with _session(job, channel) as session:
        prepared = _prepare_subjects(job, channel)
        reference_error = None
        if job.reference is not None:
            channel.progress("reference", 0)
            loaded_copy, reference_error = _load_reference(prepared[0], job)
            if loaded_copy is not None:
                prepared.append(loaded_copy)
        timing = _measure(prepared, job, channel, session, probe=job.probe, relative=job.reference is not None)
    return timing.result(session.env, reference_error=reference_error)


def _run_train_step(job: BenchmarkJob, channel: Channel) -> WorkerResult:
    """Time the model's full training step (forward, loss, backward, optimiser step) like a call:
    warmed up, adaptively sampled, synchronised; the probe rides along. Autograd is on, of course."""
    assert job.train_step is not None
    with _session(job, channel) as session:
        (prepared,) = _prepare_subjects(job, channel)
        prepared.call = train_step.make_step(prepared.model, prepared.args, job.train_step, job.device, prepared.kwargs)
        timing = _measure([prepared], job, channel, session, probe=job.probe, grad=True)
    return timing.result(session.env)


def _run_load(job: BenchmarkJob, channel: Channel) -> WorkerResult:
    """Drive the model from `job.load.concurrency` callers at once for the level's window; the calls'
    percentiles and the callers' joint throughput are the run's figures."""
    import torch

    assert job.load is not None
    with _session(job, channel) as session:
        (prepared,) = _prepare_subjects(job, channel)
        channel.progress("load", 0)
        watch = collectors.HostWatch()
        watch.start()
        spec = job.load
        if spec.processes:
            level = load.drive_processes(functools.partial(_load_caller, job.to_json()), spec.concurrency,
                                         job.batch_size, spec.duration_s, spec.warmup_s, session.nvml)
        else:
            timed, context = _caller_call(job, prepared)
            level = load.drive(timed, spec.concurrency, job.batch_size, spec.duration_s, spec.warmup_s, context,
                               session.nvml)
        host = watch.finish(0, None)
        channel.progress("collect", level.calls)
        metrics = level.metrics
        metrics.params, metrics.model_size_mb = collectors.model_size(prepared.model)
        # With caller processes, what serving this way holds: the worker's and every caller's own.
        metrics.peak_rss_mb = round(process_memory.peak_rss_mb() + sum(level.caller_peak_rss_mb), 2)
        if session.sync is not None:
            metrics.cuda_peak_mem_mb = torch.cuda.max_memory_allocated(torch.device(job.device)) / 2**20
        details = {**level.details(), "callers": "processes" if spec.processes else "threads"}
        _gpu_figures(metrics, details, level.measured, level.calls)
        result = SubjectResult(label=prepared.subject.label, metrics=metrics, samples_ms=level.stored_samples_ms(),
                               flags=[], details=details)
    return WorkerResult(env=session.env, host=host, subjects=[result])


def run_train_compare(job: TrainCompareJob, channel: Channel) -> WorkerResult:
    """The training step as configured, then under each autocast candidate, timed interleaved, each
    stepping its own copy of the model; each subject's details keep the losses its fresh copy reached
    over the first `fidelity_steps` steps, from the same weights on the same batch."""
    with _session(job, channel) as session:
        (base,) = _prepare_subjects(job, channel)
        specs = [job.train_step, *job.candidates]
        losses = [_losses(base, spec, job) for spec in specs]  # each from a copy: base.model never steps
        timed = []
        for spec in specs:
            subject = dataclasses.replace(base.subject, label=_amp_label(spec))
            copy_of = Prepared(subject, job, model=copy.deepcopy(base.model), inputs=(base.args, base.kwargs))
            copy_of.call = train_step.make_step(copy_of.model, base.args, spec, job.device, base.kwargs)
            timed.append(copy_of)
        timing = _measure(timed, job, channel, session, grad=True)
    for result, spec, seen in zip(timing.results, specs, losses, strict=True):
        result.details.update(amp=spec.amp, losses=seen)
    return timing.result(session.env)


def _losses(base: Prepared, spec: TrainSpec, job: TrainCompareJob) -> list[float]:
    """The losses a fresh copy of the model reaches over `job.fidelity_steps` steps of `spec`."""
    model = copy.deepcopy(base.model)
    step = train_step.make_step(model, base.args, spec, job.device, base.kwargs)
    return [step() for _ in range(job.fidelity_steps)]


def _amp_label(spec: TrainSpec) -> str:
    return f"amp_{spec.amp}" if spec.amp else "current"


CallerCall = tuple[Callable[[], Any], Callable[[], contextlib.AbstractContextManager[Any]]]


def _load_caller(text: str) -> CallerCall:
    """A load caller process's set-up (load.drive_processes): the job's model built in that process,
    on the job's threads, and its call."""
    import torch

    job = read_job(text)
    if job.threads:
        torch.set_num_threads(job.threads)
    return _caller_call(job, Prepared(job.subjects[0], job))


def _caller_call(job: Job, prepared: Prepared) -> CallerCall:
    """A load caller's call (synchronised on CUDA) and the context its loop runs in."""
    import torch

    call = prepared.call
    if not job.device.startswith("cuda"):
        return call, torch.inference_mode

    def synced() -> Any:
        out = call()
        torch.cuda.synchronize()
        return out

    return synced, torch.inference_mode


def run_compare(job: CompareJob, channel: Channel) -> WorkerResult:
    """An A/B of the job's subjects, each compared with the first."""
    with _session(job, channel) as session:
        timing = _measure(_prepare_subjects(job, channel), job, channel, session)
    return timing.result(session.env)


def run_freeze(job: FreezeJob, channel: Channel) -> WorkerResult:
    """Freeze the model, then time it beside the reloaded copy."""
    with _session(job, channel) as session:
        prepared = _prepare_subjects(job, channel)
        channel.progress("freeze", 0)
        frozen, copy = _freeze(prepared[0], job)  # outside inference_mode: export traces as autograd would
        timing = _measure([*prepared, copy], job, channel, session, probe=job.probe)
    return timing.result(session.env, frozen=frozen)


def run_candidates(job: CandidatesJob, channel: Channel) -> WorkerResult:
    """Build the candidates of the current variant, then time them interleaved with it."""
    with _session(job, channel) as session:
        prepared = _prepare_subjects(job, channel)
        channel.progress("build", 0)
        # outside inference_mode: a train hook, or distillation, needs autograd
        built, timed = _build_candidates(prepared[0], job, channel.progress)
        timing = _measure([*prepared, *timed], job, channel, session, forward_peak=True)
    return timing.result(session.env, built=built)


def run_profile(job: ProfileJob, channel: Channel) -> WorkerResult:
    """Where each subject's time goes, by operator (for the diagnosis), instead of timing it."""
    import torch

    with _session(job, channel) as session:
        prepared = _prepare_subjects(job, channel)
        channel.progress("profile", 0)
        watch = collectors.HostWatch()
        watch.start()
        with torch.inference_mode():
            own = {p.subject.label: profiler for p in prepared if (profiler := _own_profiler(p)) is not None}
            profiles = profiling.profile_subjects({p.subject.label: p.call for p in prepared}, job.device, own)
    return WorkerResult(env=session.env, host=watch.finish(0, None), subjects=[], profiles=profiles)


RUNNERS: dict[type[Job], Callable[[Any, Channel], WorkerResult]] = {
    PrepareJob: run_prepare,
    BenchmarkJob: run_benchmark,
    CompareJob: run_compare,
    FreezeJob: run_freeze,
    CandidatesJob: run_candidates,
    TrainCompareJob: run_train_compare,
    ProfileJob: run_profile,
}


def run_job(job: WorkerJob, channel: Channel) -> WorkerResult:
    for entry in reversed(job.sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    return RUNNERS[type(job)](job, channel)


def _prepare_subjects(job: Job, channel: Channel) -> list[Prepared]:
    channel.progress("setup", 0)
    # Factories run with autograd on: one may train or fine-tune before returning its model.
    return [Prepared(subject, job) for subject in job.subjects]


@contextlib.contextmanager
def _session(job: Job, channel: Channel) -> Iterator[Session]:
    """Threads, the GPU and NVML set up as the job asks; what the parent is told first: the environment."""
    import torch

    if job.threads:
        torch.set_num_threads(job.threads)
    torch.set_num_interop_threads(1)
    nvml = collectors.Nvml.open(job.device)
    try:
        env = collectors.environment(torch.get_num_threads(), torch.get_num_interop_threads(), job.device, nvml)
        channel.send({"event": "started", "env": env.to_dict(), "pid": os.getpid()})
        sync = None
        if job.device.startswith("cuda"):
            torch.cuda.set_device(_cuda_index(torch, job.device))
            sync = torch.cuda.synchronize
        yield Session(nvml, env, sync)
    finally:
        if nvml is not None:
            nvml.close()


def _cuda_index(torch: Any, name: str) -> int:
    """The index of device `name` ("cuda" means cuda:0), or an error that says why this host cannot
    run it: torch's own failure on a CPU-only build names a private function, not the cause."""
    index = cuda_index(name)
    if torch.version.cuda is None:
        raise DeviceUnavailable(f"device {name!r}: torch {torch.__version__} is a CPU-only build; install a "
                                'CUDA build of torch on this host, or set the model\'s device = "cpu"')
    count = torch.cuda.device_count()
    if index >= count:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise DeviceUnavailable(f"device {name!r}: torch {torch.__version__} sees {count} CUDA device(s) here"
                                + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""))
    return index


def _measure(
    prepared: list[Prepared], job: Job, channel: Channel, session: Session, *, probe: bool = False,
    relative: bool = False, forward_peak: bool = False, grad: bool = False,
) -> Timing:
    """Time the subjects interleaved (with the host probe when `probe`); with `relative`, the last
    subject is the model's reference, folded into the first's relative figures; with `forward_peak`,
    each subject's peak memory of one call is measured after the timing. Calls run in inference mode,
    or with autograd on when `grad` (a training step)."""
    import torch

    sync = session.sync
    with torch.enable_grad() if grad else torch.inference_mode():
        if sync is not None:
            torch.cuda.reset_peak_memory_stats()
        contention = collectors.CpuContentionProbe()
        watch = collectors.HostWatch()
        watch.start()
        runs = [(p.subject.label, sampling.block_runner(p.call, sync)) for p in prepared]
        probes = _probe_runs(job, sync) if probe else []
        shares, stop = _sampling_plan(relative, len(runs), len(probes))
        inter = sampling.interleaved_sample(
            runs + probes, job.sampling, contention, channel.progress, session.nvml, shares=shares, stop=stop
        )
        sampled_all = inter.subjects[: len(runs)]
        comparison = inter.comparison if len(runs) > 1 and not relative else None
        pressure = sampled_all[0].contention_pct if contention.has_psi else None
        host = watch.finish(inter.contended_rounds, pressure)
        channel.progress("collect", len(sampled_all[0].samples_ns))
        results = [_subject_result(p, s, job) for p, s in zip(prepared, sampled_all, strict=True)]
        if relative and len(results) > 1:
            _relative_metrics(results[0].metrics, inter, results.pop())
        for (label, _), sampled in zip(probes, inter.subjects[len(runs) :], strict=True):
            value = statistics.median(sampled.samples_ns) / 1e6 if sampled.samples_ns else None
            setattr(results[0].metrics, PROBE_FIELDS[label], value)
        if forward_peak:  # after peak_rss_mb was read: this resets the process's peak
            for p, result in zip(prepared, results, strict=True):
                result.details["forward_peak_mb"] = collectors.forward_peak_mb(_memory_call(p), job.device)
    return Timing(host, results, comparison)


def _sampling_plan(relative: bool, runs: int, probes: int) -> tuple[list[float] | None, sampling.StopRule]:
    """Each subject's share of the budget and when to stop. A scheduled run: what detection reads
    steers the stop (the ratio to the reference when there is one, else the model's median); the
    probe rides along. The model gets 3/5 of the rest: its timings are stored as its percentiles too,
    and must reach min_samples, which binds for slow models; the ratio's interval is only 2 % wider
    than at 1/2."""
    if not relative and not probes:
        return None, sampling.StopRule()
    rest = 1.0 - host_probe.SHARE * probes
    split = [MODEL_SHARE, 1.0 - MODEL_SHARE] if runs == 2 else [1.0] * runs
    shares = [rest * s for s in split] + [host_probe.SHARE] * probes
    stop = sampling.StopRule(absolute=(), ratios=(1,)) if runs > 1 else sampling.StopRule(absolute=(0,))
    return shares, stop


MODEL_SHARE = 0.6  # of a relative round (less the probe's), the model's; the rest is its reference's
PROBE_FIELDS = {
    host_probe.LABELS["blas"]: "probe_blas_ms",
    host_probe.LABELS["python"]: "probe_python_ms",
    "probe.cuda": "probe_cuda_ms",
}
CUDA_PROBE_SIZE = 1024


def _probe_runs(job: Job, sync: Callable[[], None] | None) -> list[tuple[str, Callable[[int], list[int]]]]:
    """The host-speed probe's block runners; on CUDA also a fixed matrix product on the GPU (its
    clocks and temperature drift too), synchronised like the model's calls."""
    import torch

    runs = host_probe.HostSpeedProbe().runners()
    if sync is not None:
        generator = torch.Generator().manual_seed(0)
        a, b = (torch.randn(CUDA_PROBE_SIZE, CUDA_PROBE_SIZE, generator=generator).to(job.device) for _ in range(2))
        runs.append(("probe.cuda", sampling.block_runner(lambda: torch.mm(a, b), sync)))
    return runs


def _exit_with_runner() -> None:
    """End this worker, and whatever it started, if the runner that spawned it goes away.

    A watcher thread rather than PR_SET_PDEATHSIG: that signal follows the *thread* that forked, so a
    daemon spawning workers from a thread pool would see live workers killed when a thread retires.
    """
    runner = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != runner:  # re-parented: the runner died
                if os.getpgrp() == os.getpid():  # our own group (the runner's doing): take it all
                    os.killpg(os.getpgrp(), signal.SIGKILL)
                os._exit(1)

    threading.Thread(target=watch, name="perfguard-runner-watch", daemon=True).start()


def main() -> int:
    faulthandler.enable()
    _exit_with_runner()
    # Keep the original stdout for the protocol; send everything else that writes to fd 1 to stderr.
    channel = Channel(os.fdopen(os.dup(1), "w", encoding="utf-8"))
    os.dup2(2, 1)
    try:
        job = read_job(sys.stdin.read())
        result = run_job(job, channel)
    except Exception as exc:  # noqa: BLE001 - reported to the runner as the run's error, then exit 1
        traceback.print_exc()
        channel.send({"event": "error", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    channel.send(result.to_event())
    return 0


if __name__ == "__main__":
    sys.exit(main())
