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


#: Bytes of network activations per input pixel that must fit at once (a U-Net with 16 channels at
#: full resolution, skip connections held; fp32, an upper bound from the layer sizes: half in fp16).
ACTIVATION_BYTES_PER_PX_FP32 = 600
#: Largest batch of analysis tiles per network call on a GPU.
MAX_GPU_TILE_BATCH = 32


def tiles_per_batch(device: torch.device, side_px: int, *, precision: str = "fp32") -> int:
    """Analysis tiles of ``side_px``² px per network call on ``device``.

    1 on a CPU or MPS; on CUDA as many as half the card's free memory holds at
    :data:`ACTIVATION_BYTES_PER_PX_FP32` (halved for fp16/bf16), at most
    :data:`MAX_GPU_TILE_BATCH`.
    """
    if device.type != "cuda":
        return 1
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    per_px = ACTIVATION_BYTES_PER_PX_FP32 / (2 if precision in ("fp16", "bf16") else 1)
    fits = int(0.5 * free // max(1.0, per_px * side_px * side_px))
    return max(1, min(MAX_GPU_TILE_BATCH, fits))
