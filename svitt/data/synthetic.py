"""The embedded synthetic temporal video-text benchmark (no download needed).

A video shows one or two objects (colour, shape, size) on a plain background. Its script is a
list of boundary states; between two states exactly one object acts: it moves left, right, up
or down by half the frame, appears, or disappears. Captions, labels and questions are derived
from the script; the time-reversed script (states in reverse order) gives the reversed-order
distractor, and rendering the reversed script gives exactly the reversed frames. A text is
order-dependent when it differs from its distractor, so a frame-order-blind model cannot tell
the two apart; `synthetic_manifest.json` records the share per split.

The files follow the layout of `svitt.data.annotations`, so the same code reads real and
synthetic data. Generation rules and sizes are documented in docs/data.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from svitt.config import ConfigError
from svitt.data.annotations import REGISTRY, dataset_paths
from svitt.errors import OutputExistsError

log = logging.getLogger(__name__)

GENERATOR_VERSION = 3  # 2: a deterministic tokenizer vocabulary; 3: balanced, typed QA
FRAME_SIZE = 64  # pixels; a 32x32 model crop still shows every shape and colour clearly
FPS = 8
TRAVEL = 32  # pixels an object moves in one event: half the frame
MARGIN = 14  # closest an object centre comes to the border
BACKGROUND = (24, 24, 24)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 60),
    "blue": (40, 90, 255),
    "yellow": (250, 220, 30),
    "purple": (170, 60, 230),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
SIZES: dict[str, int] = {"small": 16, "big": 24}  # side / diameter in pixels
DIRECTIONS: dict[str, tuple[int, int]] = {
    "right": (1, 0),
    "left": (-1, 0),
    "up": (0, -1),
    "down": (0, 1),
}
OPPOSITE = {
    "right": "left",
    "left": "right",
    "up": "down",
    "down": "up",
    "appear": "disappear",
    "disappear": "appear",
}
Size = Literal["default", "ci"]
TOKENIZER_DIR = "tokenizer"
MANIFEST = "synthetic_manifest.json"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


# --- the world: objects, scripts, events -------------------------------------------------


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    size: str

    def phrase(self, article: str = "a", with_size: bool = False) -> str:
        words = [article, self.size if with_size else "", self.color, self.shape]
        return " ".join(w for w in words if w)


@dataclass(frozen=True)
class State:
    x: int
    y: int
    visible: bool


@dataclass(frozen=True)
class Script:
    """Objects and their boundary states; phase k runs from states[k] to states[k + 1]."""

    objects: tuple[Obj, ...]
    states: tuple[tuple[State, ...], ...]

    @property
    def num_phases(self) -> int:
        return len(self.states) - 1

    def reversed(self) -> Script:
        return Script(self.objects, tuple(reversed(self.states)))

    def events(self) -> list[tuple[int, str]]:
        """(actor, action) per phase; action: a direction, 'appear' or 'disappear'."""
        out = []
        for before, after in zip(self.states, self.states[1:], strict=False):
            changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
            assert len(changed) == 1, "exactly one object acts per phase"
            i = changed[0]
            a, b = before[i], after[i]
            if a.visible != b.visible:
                out.append((i, "appear" if b.visible else "disappear"))
            else:
                dx, dy = np.sign(b.x - a.x), np.sign(b.y - a.y)
                out.append((i, next(d for d, v in DIRECTIONS.items() if v == (dx, dy))))
        return out


Kind = Literal["still1", "still2", "move1", "show1", "seq_same", "seq_two"]


def _sample_objects(rng: np.random.Generator, count: int) -> tuple[Obj, ...]:
    """Distinct colours and distinct shapes, so 'the square' or 'the red object' is unique."""
    colors = rng.choice(list(COLORS), size=count, replace=False)
    shapes = rng.choice(list(SHAPES), size=count, replace=False)
    sizes = rng.choice(list(SIZES), size=count)
    return tuple(Obj(str(c), str(s), str(z)) for c, s, z in zip(colors, shapes, sizes, strict=True))


def _sample_actions(rng: np.random.Generator, kind: Kind) -> tuple[int, list[tuple[int, str]]]:
    """Number of objects and the (actor, action) sequence of a script kind."""
    directions = list(DIRECTIONS)
    if kind in ("still1", "still2"):
        return (1 if kind == "still1" else 2), []
    if kind == "move1":
        return int(rng.integers(1, 3)), [(0, str(rng.choice(directions)))]
    if kind == "show1":
        return int(rng.integers(1, 3)), [(0, str(rng.choice(["appear", "disappear"])))]
    if kind == "seq_same":
        first = str(rng.choice([*directions, "appear"]))
        if first == "appear":
            return 1, [(0, "appear"), (0, str(rng.choice(directions)))]
        second = str(
            rng.choice([d for d in directions if d not in (first, OPPOSITE[first])] + ["disappear"])
        )
        return 1, [(0, first), (0, second)]
    if kind == "seq_two":
        actions = [str(rng.choice([*directions, "appear", "disappear"])) for _ in range(2)]
        return 2, [(0, actions[0]), (1, actions[1])]
    raise ValueError(f"unknown script kind {kind!r}")


def _place(rng: np.random.Generator, moves: list[str]) -> tuple[int, int]:
    """A start position that keeps every boundary position of the object inside the frame."""
    start = []
    for axis in (0, 1):
        path = np.cumsum([0] + [DIRECTIONS[m][axis] * TRAVEL for m in moves])
        low, high = MARGIN - path.min(), FRAME_SIZE - MARGIN - path.max()
        start.append(int(rng.integers(low, high + 1)))
    return start[0], start[1]


def _overlaps(script: Script) -> bool:
    """Whether two visible objects come close at a boundary (mid-phase crossings are fine)."""
    if len(script.objects) < 2:
        return False
    gap = (SIZES[script.objects[0].size] + SIZES[script.objects[1].size]) / 2 + 2
    return any(
        a.visible and b.visible and max(abs(a.x - b.x), abs(a.y - b.y)) < gap
        for a, b in script.states
    )


def sample_script(rng: np.random.Generator, kind: Kind) -> Script:
    count, actions = _sample_actions(rng, kind)
    objects = _sample_objects(rng, count)
    for _ in range(50):
        positions, visible = [], []
        for i in range(count):
            own = [a for actor, a in actions if actor == i]
            positions.append(_place(rng, [a for a in own if a in DIRECTIONS]))
            shows = [a for a in own if a in ("appear", "disappear")]
            visible.append(not shows or shows[0] == "disappear")
        states = [tuple(State(x, y, v) for (x, y), v in zip(positions, visible, strict=True))]
        for actor, action in actions:
            current = list(states[-1])
            s = current[actor]
            if action in DIRECTIONS:
                dx, dy = DIRECTIONS[action]
                current[actor] = State(s.x + dx * TRAVEL, s.y + dy * TRAVEL, s.visible)
            else:
                current[actor] = State(s.x, s.y, action == "appear")
            states.append(tuple(current))
        script = Script(objects, tuple(states))
        if not _overlaps(script):
            return script
    return script  # a rare touching pair is still a valid video


# --- rendering and encoding ----------------------------------------------------------------

_GRID_Y, _GRID_X = np.mgrid[0:FRAME_SIZE, 0:FRAME_SIZE] + 0.5


def _mask(obj: Obj, cx: float, cy: float) -> np.ndarray:
    r = SIZES[obj.size] / 2
    dx, dy = _GRID_X - cx, _GRID_Y - cy
    if obj.shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if obj.shape == "circle":
        return dx**2 + dy**2 <= r**2
    # triangle pointing up: apex at the top, base of width 2r at the bottom
    return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)


def render(script: Script, num_frames: int) -> np.ndarray:
    """uint8 frames [num_frames, H, W, 3]. Each phase spans num_frames / phases frames, with
    positions interpolated from its first to its last frame; an object appears (disappears)
    at the phase midpoint, so the rendering of the reversed script is the reversed video."""
    phases = max(1, script.num_phases)
    if num_frames % phases:
        raise ValueError(f"{num_frames} frames cannot be split into {phases} equal phases")
    per_phase = num_frames // phases
    frames = np.empty((num_frames, FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    frames[:] = BACKGROUND
    for f in range(num_frames):
        k = min(f // per_phase, script.num_phases - 1) if script.num_phases else 0
        alpha = (f % per_phase) / (per_phase - 1) if per_phase > 1 else 0.0
        before = script.states[k]
        after = script.states[k + 1] if script.num_phases else before
        for obj, a, b in zip(script.objects, before, after, strict=True):
            visible = a.visible if a.visible == b.visible else (alpha > 0.5) == b.visible
            if visible:
                cx = a.x + (b.x - a.x) * alpha
                cy = a.y + (b.y - a.y) * alpha
                frames[f][_mask(obj, cx, cy)] = COLORS[obj.color]
    return frames


# x264's AVX-512 code (core 165, as PyAV bundles it) reads heap memory it never wrote, so on
# an AVX-512 CPU the bytes of a few videos depend on what the process allocated and freed
# before: on which videos the same worker encoded earlier. glibc's M_PERTURB option with byte
# 255 fills every new allocation with 255 ^ 0xff = 0, which is what those reads see in a fresh
# process; elsewhere (no glibc, or no AVX-512) this changes nothing.
_M_PERTURB = -6
_LIBC = ctypes.CDLL(None) if os.name == "posix" else None


@contextmanager
def _zero_filled_allocations() -> Iterator[None]:
    mallopt = getattr(_LIBC, "mallopt", None)
    if mallopt is None:
        yield
        return
    mallopt(_M_PERTURB, 255)
    try:
        yield
    finally:
        mallopt(_M_PERTURB, 0)  # zero-filling costs a memset per allocation and free


def write_video(path: Path, frames: np.ndarray, fps: int = FPS) -> None:
    """H.264 / yuv420p mp4; one encoder thread and zero-filled allocations so the bytes are
    reproducible."""
    import av

    with _zero_filled_allocations(), av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"threads": "1", "crf": "18"})
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _render_and_write(job: tuple[Path, Script, int]) -> None:
    path, script, num_frames = job
    write_video(path, render(script, num_frames))


def write_videos(jobs: Sequence[tuple[Path, Script, int]], workers: int) -> None:
    """Render and encode each (path, script, frames) job, in `workers` processes if > 1."""
    bar = dict(
        total=len(jobs), desc="synthetic videos", unit="video", mininterval=1.0, disable=None
    )
    if workers > 1:
        pool = ProcessPoolExecutor(workers)
        try:
            for _ in tqdm(pool.map(_render_and_write, jobs, chunksize=32), **bar):
                pass
        finally:  # on an interrupt, drop the videos not started yet
            pool.shutdown(cancel_futures=True)
    else:
        for job in tqdm(jobs, **bar):
            _render_and_write(job)


# --- texts: captions, labels, paragraphs, questions ----------------------------------------


def _verb(action: str) -> str:
    return f"moves {action}" if action in DIRECTIONS else f"{action}s"


@dataclass(frozen=True)
class CaptionStyle:
    """What a caption mentions; drawn once per video so the distractor uses the same form."""

    with_size: bool = False
    mention_static: bool = False


def caption(script: Script, style: CaptionStyle) -> str:
    """'a red square moves right, then a blue circle appears' and the like."""
    objs, events = script.objects, script.events()
    np_ = [o.phrase("a", style.with_size) for o in objs]
    if not events:
        return f"{np_[0]} stays still" if len(objs) == 1 else f"{np_[0]} and {np_[1]} stay still"
    actors = [actor for actor, _ in events]
    text = f"{np_[actors[0]]} {_verb(events[0][1])}"
    if len(events) == 2:
        second_actor, second_action = events[1]
        subject = "" if second_actor == actors[0] else f"{np_[second_actor]} "
        text += f", then {subject}{_verb(second_action)}"
    idle = [i for i in range(len(objs)) if i not in actors]
    if style.mention_static and idle:
        text += f" while {np_[idle[0]]} stays still"
    return text


def paragraph(script: Script, style: CaptionStyle) -> list[str]:
    """DiDeMo-like: one sentence per moment."""
    objs, events = script.objects, script.events()
    np_ = [o.phrase("a", style.with_size) for o in objs]
    if not events:
        return [f"{p} stays still" for p in np_]
    sentences = [f"{np_[events[0][0]]} {_verb(events[0][1])}"]
    if len(events) == 2:
        sentences.append(f"then {np_[events[1][0]]} {_verb(events[1][1])}")
    idle = [i for i in range(len(objs)) if i not in {a for a, _ in events}]
    if style.mention_static and idle:
        sentences.append(f"{np_[idle[0]]} stays still")
    return sentences


def label(script: Script) -> str:
    """SSv2-Label-like template label about the one acting object."""
    events = script.events()
    if not events:
        return f"holding {script.objects[0].phrase('the')} still"
    actor, action = events[0]
    obj = script.objects[actor].phrase("the")
    phrases = {
        "right": "from left to right",
        "left": "from right to left",
        "up": "up",
        "down": "down",
        "appear": "appearing",
        "disappear": "disappearing",
    }
    if action in DIRECTIONS:
        return f"moving {obj} {phrases[action]}"
    return f"{obj} {phrases[action]}"


def _answer_phrase(action: str) -> str:
    return f"move {action}" if action in DIRECTIONS else action


QuestionType = Literal[
    "count",
    "color",
    "shape",
    "size",
    "direction",
    "appearance",
    "first",
    "last",
    "first_shape",
    "order",
]
# Types whose answer changes when the video is played backwards (the rest are static).
TEMPORAL_QUESTION_TYPES: frozenset[str] = frozenset(
    {"direction", "appearance", "first", "last", "first_shape", "order"}
)


@dataclass(frozen=True)
class Question:
    """A question whose answer is read off a script (the video or its reversal)."""

    text: str
    answer: Callable[[Script], str]
    kind: QuestionType

    @property
    def temporal(self) -> bool:
        return self.kind in TEMPORAL_QUESTION_TYPES


def candidate_questions(script: Script) -> list[Question]:
    objs, events = script.objects, script.events()
    out = [
        Question(
            "how many objects are there?", lambda s: ["one", "two"][len(s.objects) - 1], "count"
        )
    ]
    for i, o in enumerate(objs):
        out += [
            Question(f"what color is the {o.shape}?", lambda s, i=i: s.objects[i].color, "color"),
            Question(
                f"what shape is the {o.color} object?", lambda s, i=i: s.objects[i].shape, "shape"
            ),
            Question(
                f"is the {o.color} {o.shape} big or small?",
                lambda s, i=i: s.objects[i].size,
                "size",
            ),
        ]
        own = [a for actor, a in events if actor == i]
        moves = [a for a in own if a in DIRECTIONS]
        shows = [a for a in own if a not in DIRECTIONS]
        name = f"{o.color} {o.shape}"

        def own_actions(s: Script, i: int = i) -> list[str]:
            return [a for actor, a in s.events() if actor == i]

        if len(moves) == 1:
            out.append(
                Question(
                    f"which way does the {name} move?",
                    lambda s, f=own_actions: next(a for a in f(s) if a in DIRECTIONS),
                    "direction",
                )
            )
        if len(shows) == 1:
            out.append(
                Question(
                    f"does the {name} appear or disappear?",
                    lambda s, f=own_actions: next(a for a in f(s) if a not in DIRECTIONS),
                    "appearance",
                )
            )
        if len(own) == 2:
            out += [
                Question(
                    f"what does the {name} do first?",
                    lambda s, f=own_actions: _answer_phrase(f(s)[0]),
                    "first",
                ),
                Question(
                    f"what does the {name} do last?",
                    lambda s, f=own_actions: _answer_phrase(f(s)[-1]),
                    "last",
                ),
            ]
    if len(events) == 2 and events[0][0] != events[1][0]:
        out.append(
            Question(
                "which shape acts first?",
                lambda s: s.objects[s.events()[0][0]].shape,
                "first_shape",
            )
        )
        # Both namings: naming the first actor first would make "before" the answer of every
        # training question (whose videos are never reversed).
        for i, j in ((events[0][0], events[1][0]), (events[1][0], events[0][0])):
            a, b = objs[i], objs[j]
            out.append(
                Question(
                    f"does the {a.color} {a.shape} act before or after the {b.color} {b.shape}?",
                    lambda s, i=i: "before" if s.events()[0][0] == i else "after",
                    "order",
                )
            )
    return out


# --- datasets -------------------------------------------------------------------------------

TextForm = Literal["caption", "paragraph", "label", "qa"]


@dataclass(frozen=True)
class Recipe:
    """How one stand-in dataset is drawn."""

    frames: int
    kinds: dict[str, float]  # script kind -> probability
    form: TextForm
    with_size: float = 0.0  # probability that a caption names object sizes
    mention_static: float = 0.0  # probability that a caption names an idle object
    temporal_questions: float = 0.0  # QA: probability of asking a temporal question


_MIXED = {
    "still1": 0.1,
    "still2": 0.1,
    "move1": 0.3,
    "show1": 0.15,
    "seq_same": 0.15,
    "seq_two": 0.2,
}
# Mostly descriptive, the least temporal (MSR-VTT)
_DESCRIPTIVE = {"still1": 0.3, "still2": 0.4, "move1": 0.2, "show1": 0.1}
# Mostly two events in turn (DiDeMo's moments)
_SEQUENTIAL = {"still2": 0.1, "move1": 0.1, "seq_same": 0.3, "seq_two": 0.5}
# One moving or appearing object: template labels, the most temporal (SSv2-Label)
_SINGLE_ACTION = {"still1": 0.1, "move1": 0.6, "show1": 0.3}
# Compositional actions (AGQA)
_COMPOSITIONAL = {"move1": 0.2, "show1": 0.1, "seq_same": 0.3, "seq_two": 0.4}
RECIPES: dict[str, Recipe] = {
    "webvid": Recipe(16, _MIXED, "caption", with_size=0.3, mention_static=0.3),
    "msrvtt": Recipe(16, _DESCRIPTIVE, "caption", with_size=0.5, mention_static=0.7),
    "didemo": Recipe(24, _SEQUENTIAL, "paragraph", with_size=0.3, mention_static=0.5),
    "charades": Recipe(24, _MIXED, "caption", with_size=0.3, mention_static=0.3),
    "ssv2_label": Recipe(16, _SINGLE_ACTION, "label"),
    "msrvtt_qa": Recipe(16, _MIXED, "qa", temporal_questions=0.2),
    "anet_qa": Recipe(24, _MIXED, "qa", temporal_questions=0.5),
    "agqa": Recipe(24, _COMPOSITIONAL, "qa", temporal_questions=0.75),
}


def _split_sizes(pretrain: int, train: int, test: int, **own: dict[str, Any]) -> dict[str, Any]:
    """Videos per split of every stand-in: `pretrain` for webvid, `train` and `test` for the
    others except those given their own sizes in `own`."""
    sizes: dict[str, Any] = {name: {"train": train, "test": test} for name in RECIPES}
    sizes["webvid"] = {"train": pretrain}
    return sizes | own


# videos per split; ssv2_label test: (labels, videos per label)
SPLIT_SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "default": _split_sizes(1600, 400, 100, ssv2_label={"train": 600, "test": (40, 3)}),
    "ci": _split_sizes(64, 24, 16, ssv2_label={"train": 24, "test": (8, 2)}),
}
# Test videos are asked more questions: fewer than 100 temporal ones would leave a per-type
# accuracy a few questions wide.
QUESTIONS_PER_VIDEO = {"train": 2, "test": 4}


def _draw_kind(rng: np.random.Generator, recipe: Recipe) -> Kind:
    kinds = list(recipe.kinds)
    p = np.array([recipe.kinds[k] for k in kinds])
    return kinds[int(rng.choice(len(kinds), p=p / p.sum()))]  # type: ignore[return-value]


def _text(recipe: Recipe, script: Script, style: CaptionStyle) -> str | list[str]:
    if recipe.form == "paragraph":
        return paragraph(script, style)
    if recipe.form == "label":
        return label(script)
    return caption(script, style)


def _style(rng: np.random.Generator, recipe: Recipe) -> CaptionStyle:
    return CaptionStyle(
        bool(rng.random() < recipe.with_size), bool(rng.random() < recipe.mention_static)
    )


@dataclass
class SplitDraft:
    """Scripts to render (file name -> script) and the annotation entries that use them."""

    videos: dict[str, Script]
    entries: list[dict[str, Any]]


def _text_entry(
    video: str | list[str], text: str | list[str], reversed_text: str | list[str]
) -> dict[str, Any]:
    return {"video": video, "caption": text, "reversed_caption": reversed_text}


def _draw_train_texts(rng: np.random.Generator, recipe: Recipe, count: int) -> SplitDraft:
    draft = SplitDraft({}, [])
    for i in range(count):
        script, style = sample_script(rng, _draw_kind(rng, recipe)), _style(rng, recipe)
        name = f"train{i:05d}.mp4"
        draft.videos[name] = script
        draft.entries.append(
            _text_entry(name, _text(recipe, script, style), _text(recipe, script.reversed(), style))
        )
    return draft


def _joined(text: str | list[str]) -> str:
    return " ".join(text) if isinstance(text, list) else text


def _draw_test_texts(rng: np.random.Generator, recipe: Recipe, count: int) -> SplitDraft:
    """Unique texts; an order-dependent video comes with its exact reversal as a second test
    video (whose caption is the distractor), so only a model that sees order can tell them
    apart."""
    draft, used = SplitDraft({}, []), set()
    while len(draft.videos) < count:
        script, style = sample_script(rng, _draw_kind(rng, recipe)), _style(rng, recipe)
        pair = [(script, _text(recipe, script, style))]
        reverse_text = _text(recipe, script.reversed(), style)
        if _joined(reverse_text) != _joined(pair[0][1]):
            pair.append((script.reversed(), reverse_text))
        if any(_joined(t) in used for _, t in pair) or len(draft.videos) + len(pair) > count:
            continue
        for (s, text), (_, distractor) in zip(pair, pair[::-1], strict=True):
            name = f"test{len(draft.videos):05d}.mp4"
            draft.videos[name] = s
            used.add(_joined(text))
            draft.entries.append(_text_entry(name, text, distractor))
    return draft


def _draw_label_test(
    rng: np.random.Generator, recipe: Recipe, labels: int, per_label: int
) -> SplitDraft:
    """SSv2-Label-like test: `per_label` positive videos per label; each order-dependent
    label comes with the label of the reversed videos (the reversals of its positives)."""
    groups: dict[str, list[Script]] = {}
    while True:
        for _ in range(labels * per_label):
            script = sample_script(rng, _draw_kind(rng, recipe))
            groups.setdefault(label(script), []).append(script)
        draft = _select_label_groups(groups, labels, per_label)
        if draft is not None:
            return draft


def _select_label_groups(
    groups: dict[str, list[Script]], labels: int, per_label: int
) -> SplitDraft | None:
    """Labels in order of first draw, each with its reversed label; None if too few yet."""
    draft, chosen = SplitDraft({}, []), set()
    for text, group in groups.items():
        if len(group) < per_label or text in chosen:
            continue
        scripts = group[:per_label]
        reverse_text = label(scripts[0].reversed())
        sets = [(text, scripts, reverse_text)]
        if reverse_text != text:
            sets.append((reverse_text, [s.reversed() for s in scripts], text))
        if reverse_text in chosen or len(chosen) + len(sets) > labels:
            continue
        for caption_text, members, distractor in sets:
            names = []
            for s in members:
                names.append(f"test{len(draft.videos):05d}.mp4")
                draft.videos[names[-1]] = s
            chosen.add(caption_text)
            draft.entries.append(_text_entry(names, caption_text, distractor))
        if len(chosen) == labels:
            return draft
    return None


def _pick_question(
    rng: np.random.Generator,
    candidates: Sequence[Question],
    temporal_share: float,
    answers: dict[str, Counter[str]],
    script: Script,
) -> Question:
    """A temporal question with probability `temporal_share` (when the video has one), its
    type uniform among the video's types; never one whose answer is already more common than
    the average answer of its type in the split while another question (of the other group if
    need be) is not: the question alone then tells little ("how many objects are there?" is
    not "one" for most videos)."""
    temporal = [q for q in candidates if q.temporal]
    plain = [q for q in candidates if not q.temporal]
    pool, other = (
        (temporal, plain) if temporal and rng.random() < temporal_share else (plain, temporal)
    )

    def common(q: Question) -> bool:
        seen = answers[q.kind]
        return bool(seen) and seen[q.answer(script)] > sum(seen.values()) / len(seen)

    pool = (
        [q for q in pool if not common(q)] or [q for q in other if not common(q)] or pool or other
    )
    kinds = sorted({q.kind for q in pool})
    kind = kinds[int(rng.integers(len(kinds)))]
    of_kind = [q for q in pool if q.kind == kind]
    return of_kind[int(rng.integers(len(of_kind)))]


def _draw_qa(rng: np.random.Generator, recipe: Recipe, count: int, split: str) -> SplitDraft:
    """QA entries; each video comes with its reversal, asked the same questions (a temporal
    question then has two different answers): in the test split only a model that sees frame
    order tells the two apart, and in the training split the pair shows it that the answer
    lies in the order, not in what the frames show."""
    draft = SplitDraft({}, [])
    answers: dict[str, Counter[str]] = defaultdict(Counter)  # question type -> answer counts
    while len(draft.videos) < count:
        script = sample_script(rng, _draw_kind(rng, recipe))
        candidates = candidate_questions(script)
        questions: list[Question] = []
        while len(questions) < min(QUESTIONS_PER_VIDEO[split], len(candidates)):
            unasked = [q for q in candidates if q not in questions]
            questions.append(
                _pick_question(rng, unasked, recipe.temporal_questions, answers, script)
            )
        versions = [script, script.reversed()]
        if len(draft.videos) + len(versions) > count:
            versions = versions[:1]
        for version in versions:
            name = f"{split}{len(draft.videos):05d}.mp4"
            draft.videos[name] = version
            for q in questions:
                answers[q.kind][q.answer(version)] += 1
                draft.entries.append(
                    {
                        "video": name,
                        "question": q.text,
                        "question_type": q.kind,
                        "answer": q.answer(version),
                        "question_id": len(draft.entries),
                        "reversed_answer": q.answer(version.reversed()),
                    }
                )
    return draft


def draw_dataset(name: str, size: Size, seed: int) -> dict[str, SplitDraft]:
    """All splits of one stand-in; each dataset has its own seeded stream."""
    recipe = RECIPES[name]
    rng = np.random.default_rng([seed, list(REGISTRY).index(name)])
    drafts = {}
    for split, count in SPLIT_SIZES[size][name].items():
        if recipe.form == "qa":
            drafts[split] = _draw_qa(rng, recipe, count, split)
        elif split == "train":
            drafts[split] = _draw_train_texts(rng, recipe, count)
        elif recipe.form == "label":
            drafts[split] = _draw_label_test(rng, recipe, *count)
        else:
            drafts[split] = _draw_test_texts(rng, recipe, count)
    return drafts


def order_dependent_share(entries: Sequence[dict[str, Any]]) -> float:
    """Share of texts that differ from their reversed-order distractor (read from the
    synthetic annotations' `reversed_caption` / `reversed_answer` fields)."""
    if not entries:
        return 0.0
    key = "answer" if "answer" in entries[0] else "caption"
    differ = [_joined(e[key]) != _joined(e[f"reversed_{key}"]) for e in entries]
    return float(np.mean(differ))


# --- tokenizer, files, manifest -------------------------------------------------------------


def train_tokenizer(corpus: Sequence[str], out_dir: Path) -> None:
    """WordPiece over the synthetic corpus, BERT-style ([CLS] text [SEP], [PAD] = 0), saved in
    Hugging Face format (AutoTokenizer.from_pretrained(out_dir) loads it).

    The vocabulary is built here, not by `tokenizers`' trainer, whose tie-breaking between
    equally frequent pieces changes from process to process (and with it every token id and
    every result): special tokens, then every word of the corpus, then single characters with
    their `##` continuations (so an unseen word still tokenizes), each group sorted.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = sorted(
        {
            word
            for text in corpus
            for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
        }
    )
    chars = sorted({char for word in words for char in word})
    pieces = [*SPECIAL_TOKENS, *words, *chars, *(f"##{char}" for char in chars)]
    vocab = {piece: index for index, piece in enumerate(dict.fromkeys(pieces))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    ).save_pretrained(str(out_dir))


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _corpus(drafts: dict[str, dict[str, SplitDraft]]) -> list[str]:
    texts = []
    for splits in drafts.values():
        for draft in splits.values():
            for e in draft.entries:
                for key in ("caption", "reversed_caption", "question", "answer", "reversed_answer"):
                    if key in e:
                        texts.append(_joined(e[key]))
    return texts


def _manifest(root: Path, size: Size, seed: int) -> dict[str, Any]:
    datasets = {}
    for name in RECIPES:
        paths = dataset_paths(root, name)
        splits = {}
        for split in paths.spec.splits:
            entries = json.loads(paths.annotation(split).read_text())
            videos = {
                v
                for e in entries
                for v in (e["video"] if isinstance(e["video"], list) else [e["video"]])
            }
            splits[split] = {
                "videos": len(videos),
                "texts": len(entries),
                "order_dependent_share": round(order_dependent_share(entries), 4),
            }
        datasets[name] = {
            "frames": RECIPES[name].frames,
            "fps": FPS,
            "text_form": RECIPES[name].form,
            "splits": splits,
        }
    return {
        "generator": "svitt.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "frame_size": FRAME_SIZE,
        "datasets": datasets,
    }


def _is_current(root: Path, size: Size, seed: int) -> bool:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (manifest.get("version"), manifest.get("size"), manifest.get("seed")) == (
        GENERATOR_VERSION,
        size,
        seed,
    )


def generate(
    out: str | Path, size: Size = "default", seed: int = 0, workers: int | None = None
) -> dict[str, Any]:
    """Write every stand-in dataset, the tokenizer and the manifest under `out`; return the
    manifest. Built in a temporary sibling folder and renamed into place, so an interrupted
    run leaves nothing behind; a finished benchmark with the same size and seed is kept."""
    out = Path(out)
    if size not in SPLIT_SIZES:
        raise ConfigError(f"size: got {size!r}; allowed: {', '.join(SPLIT_SIZES)}")
    if out.exists():
        if _is_current(out, size, seed):
            log.info("%s already holds the synthetic benchmark (size=%s, seed=%d)", out, size, seed)
            return json.loads((out / MANIFEST).read_text())
        raise OutputExistsError(
            f"{out} exists and is not the synthetic benchmark with size={size}, "
            f"seed={seed}; remove it or choose another --out"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        drafts = {name: draw_dataset(name, size, seed) for name in RECIPES}
        jobs = []
        for name, splits in drafts.items():
            paths = dataset_paths(tmp, name)
            paths.video_dir.mkdir(parents=True)
            for split, draft in splits.items():
                _write_json(paths.annotation(split), draft.entries)
                jobs += [(paths.video(v), s, RECIPES[name].frames) for v, s in draft.videos.items()]
            if paths.spec.has_answer_list:
                answers = sorted(
                    {
                        e[k]
                        for d in splits.values()
                        for e in d.entries
                        for k in ("answer", "reversed_answer")
                    }
                )
                _write_json(paths.answer_list, answers)
        write_videos(jobs, workers or min(2, os.cpu_count() or 1))
        train_tokenizer(_corpus(drafts), tmp / TOKENIZER_DIR)
        manifest = _manifest(tmp, size, seed)
        _write_json(tmp / MANIFEST, manifest)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %d videos to %s", len(jobs), out)
    return manifest


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--out", required=True, type=Path, help="data root to create")
    parser.add_argument("--size", choices=list(SPLIT_SIZES), default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workers", type=int, default=None, help="encoder processes (default: up to 2)"
    )


def run(args: argparse.Namespace) -> int:
    generate(args.out, args.size, args.seed, args.workers)
    return 0
