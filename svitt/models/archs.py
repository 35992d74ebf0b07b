"""The architectures, and what the code outside `svitt/models/` needs to know about each one.

No torch here: the config, the edge counts (`svitt/sparsity.py`) and the planner read this
table, so that no code outside `svitt/models/` tests an architecture by its name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    name: str
    # Encodes every frame alone: no space-time attention (so no space-time sparsity and no
    # temporal inflation), and each clip length trains from the start.
    frame_level: bool
    # Its text tower ends in multimodal layers f_m (the last `text.cross_depth`), whose video
    # tokens Eq. 1-3 count; Frozen-in-Time is two-tower and has none.
    multimodal: bool


ARCHS: dict[str, ArchSpec] = {
    arch.name: arch
    for arch in (
        ArchSpec("svitt", frame_level=False, multimodal=True),
        ArchSpec("frozen", frame_level=False, multimodal=False),
        ArchSpec("singularity", frame_level=True, multimodal=True),
        ArchSpec("singularity_temporal", frame_level=True, multimodal=True),
    )
}
ARCH_NAMES: tuple[str, ...] = tuple(ARCHS)
