"""Models for profiler runs that must be quick: the profiler's cost grows with the layer count."""

from pathlib import Path


def write_tiny_model(directory: Path) -> Path:
    """``kwnet.py`` in ``directory`` (run the profiler there): ``--model kwnet:build``, four layers, input 1,3,8,8."""
    (directory / "kwnet.py").write_text(
        "from torch import nn\n\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))\n"
    )
    return directory
