"""Models with known behaviour for the harness tests: cheap, costly, broken in each way a worker can break."""

from __future__ import annotations

import os
import time

import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class BusyWait(nn.Module):
    """Spins a known time per call plus a tiny Linear: a model whose true latency is known."""

    def __init__(self, micros: float) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)
        self.seconds = micros / 1e6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            pass
        return self.fc(x)


class Hang(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(3600)
        return x


class Abort(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        os.abort()


class Raise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this model is broken on purpose")


class Hog(nn.Module):
    """Keeps allocating 64 MB per call until something stops it (or it holds 2 GB: a limit that failed
    to stop it then shows as a run that passed, not as a host out of memory)."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.kept) < 32:
            self.kept.append(torch.ones(16 * 2**20))
        return x


class DataDependent(nn.Module):
    """Branches in Python on a tensor's value: torch.export refuses it, a trace would bake one branch in."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class NumpyForward(nn.Module):
    """Calls numpy mid-forward: neither torch.export nor TorchScript can freeze it, only its weights."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import numpy as np  # numpy comes with the examples extra (scikit-learn)

        y = self.fc(x)
        return y * float(np.tanh(y.detach().cpu().numpy()).std())


class Noisy(nn.Module):
    """Draws fresh noise every call: no frozen copy can reproduce its output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x)


class Spectrum(nn.Module):
    """A model torch.onnx cannot export (no ONNX operator for a 2-D FFT in the TorchScript exporter)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft2(x).abs()


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return Tiny()


def leaves_state() -> nn.Module:
    """Changes its process's environment and torch's thread setting: a run forked after it must not
    see either."""
    os.environ["OMP_PERFGUARD_LEAK"] = "1"
    torch.set_num_threads(max(1, torch.get_num_threads() - 1) if torch.get_num_threads() > 1 else 2)
    return tiny()


def data_dependent() -> nn.Module:
    torch.manual_seed(0)
    return DataDependent()


def numpy_forward() -> nn.Module:
    torch.manual_seed(0)
    return NumpyForward()


def random_output() -> nn.Module:
    return Noisy()


def busy_200us() -> nn.Module:
    return BusyWait(200)


def busy_50us() -> nn.Module:
    return BusyWait(50)


def busy_100us() -> nn.Module:
    return BusyWait(100)


def busy_300us() -> nn.Module:
    return BusyWait(300)


def hang() -> nn.Module:
    return Hang()


def abort() -> nn.Module:
    return Abort()


def raises() -> nn.Module:
    return Raise()


def hog() -> nn.Module:
    return Hog()


def not_a_model() -> int:
    return 42


def tiny_inputs(batch_size: int) -> torch.Tensor:
    return torch.randn(batch_size, 16)


def tiny_eval() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Labels equal to the tiny model's own argmax on half the rows: accuracy exactly 0.5."""
    model = tiny().eval()
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(x).argmax(dim=-1)
    wrong = (labels + 1) % 4
    labels = torch.where(torch.arange(64) % 2 == 0, labels, wrong)
    return [(x[:32], labels[:32]), (x[32:], labels[32:])]


class SpawnsChild(nn.Module):
    """Starts a long-lived child process, then hangs: the runner must kill both."""

    def __init__(self) -> None:
        super().__init__()
        import subprocess
        import sys

        self.child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        pid_file = os.environ.get("PERFGUARD_TEST_CHILD_PID_FILE")
        if pid_file:
            with open(pid_file, "w") as f:
                f.write(str(self.child.pid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(3600)
        return x


def spawns_child() -> nn.Module:
    return SpawnsChild()


def spawns_detached() -> nn.Module:
    """Leaves a sleeper in a session of its own (out of the worker's process group), then benchmarks
    normally: the runner must still find and kill it."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=True)
    pid_file = os.environ.get("PERFGUARD_TEST_CHILD_PID_FILE")
    if pid_file:
        with open(pid_file, "w") as f:
            f.write(str(child.pid))
    time.sleep(1.0)  # alive across the runner's polls, as a real helper process would be
    return tiny()


def matmul() -> nn.Module:
    """Matmul-bound (512-wide, takes a [N, 512] input): its speed follows the BLAS library and its threads."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 512))


DRIFT_VERSION_FILE = "model_version.txt"


def drifting_mlp() -> nn.Module:
    """A 512-wide MLP classifier whose hidden layer grows from 512 to 2048 units once the file
    `model_version.txt` in the working folder (the config's) says 2: a new checkpoint that is slower."""
    from monitor.examples.models import seeded_mlp

    try:
        version = int(open(DRIFT_VERSION_FILE).read().strip())
    except FileNotFoundError:
        version = 1
    hidden = 2048 if version >= 2 else 512
    return seeded_mlp([512, hidden, 512, 10], seed=version)


def mlp_eval() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Labels that the drifting MLP (version 2) gets right on every row: accuracy 1.0 to defend."""
    model = drifting_mlp().eval()
    x = torch.randn(256, 512, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        labels = model(x).argmax(dim=-1)
    return [(x[i : i + 64], labels[i : i + 64]) for i in range(0, 256, 64)]


def prepare_slowly() -> None:
    """A prepare step that takes a while and a lot of memory (a training, a download), and counts
    its calls in the file named by $PREPARE_COUNT."""
    import os
    import time
    from pathlib import Path

    ballast = bytearray(300 * 2**20)  # resident: every page written
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    time.sleep(1.5)
    counter = Path(os.environ["PREPARE_COUNT"])
    counter.write_text(str(int(counter.read_text() or "0") + 1) if counter.exists() else "1")


def prepare_fails() -> None:
    raise RuntimeError("the dataset server is down")


def spectrum() -> nn.Module:
    return Spectrum()


class GradChecked(nn.Module):
    """Tiny, but refuses to run the wrong way: in train mode without autograd (a training step timed
    in inference mode would be no training step), in eval mode with it (inference timed with autograd)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training != torch.is_grad_enabled():
            raise RuntimeError(f"training={self.training} but grad enabled={torch.is_grad_enabled()}")
        return self.fc(x)


def grad_checked() -> nn.Module:
    return GradChecked()


class WideLinear(nn.Module):
    """A needlessly wide teacher whose function is linear (no activations, fixed seed): a 16 -> 4
    Linear student can learn it exactly, so distilling it must succeed, and quickly."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.net = nn.Sequential(nn.Linear(16, 512), nn.Linear(512, 512), nn.Linear(512, 4))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) / max(p.shape[-1], 1) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * 5  # distinct logits: soft targets that say something


def wide_linear() -> nn.Module:
    return WideLinear()


def wide_linear_eval() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Eight batches labelled by the teacher itself: its accuracy is 1, a student's is its agreement."""
    teacher = WideLinear().eval()
    generator = torch.Generator().manual_seed(7)
    batches = [torch.randn(64, 16, generator=generator) for _ in range(8)]
    with torch.no_grad():
        return [(x, teacher(x).argmax(dim=1)) for x in batches]


def wide_linear_eval_wrong_off_holdout() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`wide_linear_eval` with every batch outside the held-out quarter (0, 4 of 8) labelled wrong: the
    teacher scores 1 on the held-out batches alone, 0.25 on them all."""
    return [(x, labels if index % 4 == 0 else (labels + 1) % 4)
            for index, (x, labels) in enumerate(wide_linear_eval())]


def linear_student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(16, 4)


def distill_batches() -> list[torch.Tensor]:
    """Unlabelled training inputs (the soft targets are all a student gets from them)."""
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(64, 16, generator=generator) for _ in range(32)]



def unbuildable() -> nn.Module:
    raise RuntimeError("this factory must not be called")
