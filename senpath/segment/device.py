"""Choose the torch device: ``"auto"`` → CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Spellings accepted by :func:`resolve_device`.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve a device name to a :class:`torch.device` that is present on this machine.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` (CUDA if available, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
        ``"mps"``.

    Returns
    -------
    torch.device

    Raises
    ------
    RuntimeError
        When CUDA or MPS is requested but not available, or ``cuda:N`` names a missing GPU.
    ValueError
        When ``device`` is not one of the spellings above.
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {device!r} requested but CUDA is not available in this torch build "
                f"(torch {torch.__version__}, CUDA {torch.version.cuda}); use device='cpu' or 'auto'"
            )
        if name.startswith("cuda:"):
            index_text = name.split(":", 1)[1]
            if not index_text.isdigit():
                raise ValueError(f"bad CUDA device {device!r}: write it as 'cuda:N', e.g. 'cuda:0'")
            index = int(index_text)
            count = torch.cuda.device_count()
            if index >= count:
                raise RuntimeError(
                    f"device {device!r} requested but only {count} CUDA device(s) are visible "
                    f"(cuda:0..cuda:{count - 1})"
                )
            return torch.device("cuda", index)
        return torch.device("cuda")
    if name == "mps":
        if not _mps_available():
            raise RuntimeError("device 'mps' requested but Apple MPS is not available; use 'cpu'")
        return torch.device("mps")
    raise ValueError(f"unknown device {device!r}: use one of {', '.join(DEVICE_CHOICES)}")


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
