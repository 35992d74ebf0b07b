import numpy as np
import pytest
import torch

from svitt.data.synthetic import write_video
from svitt.data.video import (
    ClipLoader,
    ClipSpec,
    frame_order_permutation,
    sample_indices,
    sample_rng,
)
from svitt.data.video_files import VideoError, probe_video, video_metadata

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


STEP = 6  # grey levels between consecutive frames: 40 frames fit in uint8


def grey_ramp_video(path, frames=20, fps=8):
    """Frame f is a flat grey of level STEP * f, so a decoded frame tells its index."""
    data = np.stack([np.full((64, 64, 3), STEP * f, np.uint8) for f in range(frames)])
    write_video(path, data, fps)
    return path


def frame_index(clip):
    """Recover frame indices from a normalised grey-ramp clip [T, 3, H, W]."""
    level = (clip.mean(dim=(1, 2, 3)) * STD[0] + MEAN[0]) * 255
    return [round(v / STEP) for v in level.tolist()]


@pytest.mark.parametrize(("length", "t"), [(100, 4), (100, 8), (17, 16), (16, 16), (3, 8)])
def test_train_sampling_one_per_chunk_seeded(length, t):
    a = sample_indices(length, t, train=True, rng=sample_rng(0, 1, 5))
    b = sample_indices(length, t, train=True, rng=sample_rng(0, 1, 5))
    assert a == b and len(a) == t
    for chunk, index in enumerate(a):
        start = chunk * length // t
        stop = max(start + 1, (chunk + 1) * length // t)
        assert start <= index < stop and 0 <= index < length
    draws = {tuple(sample_indices(100, 4, True, sample_rng(0, e, 5))) for e in range(20)}
    assert len(draws) > 1  # other epochs draw other frames


def test_eval_sampling_takes_chunk_middles():
    assert sample_indices(100, 4, train=False) == [12, 37, 62, 87]
    assert sample_indices(16, 16, train=False) == list(range(16))
    assert sample_indices(3, 6, train=False) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="seeded generator"):
        sample_indices(10, 2, train=True)


@pytest.mark.parametrize("t", [1, 2, 3, 4, 8, 16])
def test_order_probes_are_permutations_and_shuffle_differs(t):
    normal = frame_order_permutation(t, "normal")
    assert normal == list(range(t))
    assert frame_order_permutation(t, "reverse") == normal[::-1]
    for seed in range(25):
        perm = frame_order_permutation(t, "shuffle", np.random.default_rng(seed))
        assert sorted(perm) == normal
        if t > 1:
            assert all(p != i for i, p in enumerate(perm))  # a derangement
    with pytest.raises(ValueError, match="allowed"):
        frame_order_permutation(t, "sideways")


def spec(train, order="normal", frames=4, size=32, clips=1):
    return ClipSpec(
        num_frames=frames,
        image_size=size,
        mean=MEAN,
        std=STD,
        train=train,
        frame_order=order,
        seed=3,
        num_clips=clips,
    )


def test_eval_clip_shape_normalisation_and_order_probes(tmp_path):
    path = grey_ramp_video(tmp_path / "ramp.mp4")
    clip = ClipLoader(spec(False))(path, index=0)
    assert clip.shape == (4, 3, 32, 32) and clip.dtype == torch.float32
    assert frame_index(clip) == [2, 7, 12, 17]  # chunk middles of 20 frames
    reverse = ClipLoader(spec(False, "reverse"))(path, 0)
    assert frame_index(reverse) == [17, 12, 7, 2]
    shuffled = frame_index(ClipLoader(spec(False, "shuffle"))(path, 0))
    assert sorted(shuffled) == [2, 7, 12, 17] and shuffled != [2, 7, 12, 17]
    with pytest.raises(ValueError, match="evaluation only"):
        spec(True, "reverse")


def test_three_test_clips_are_the_video_thirds_and_probes_stay_within_each(tmp_path):
    """The release's num_frames_test = 3T: the middles of 3T chunks, cut into 3 clips of T."""
    path = grey_ramp_video(tmp_path / "ramp.mp4", frames=24)
    loader = ClipLoader(spec(False, frames=2, clips=3))
    assert loader.clip_shape == (6, 3, 32, 32)
    clips = frame_index(loader(path, 0))
    assert clips == [1, 5, 9, 13, 17, 21]  # chunks of 4; thirds: frames 0-7, 8-15, 16-23
    reverse = frame_index(ClipLoader(spec(False, "reverse", frames=2, clips=3))(path, 0))
    assert reverse == [5, 1, 13, 9, 21, 17]
    shuffled = frame_index(ClipLoader(spec(False, "shuffle", frames=2, clips=3))(path, 0))
    assert shuffled == reverse  # the only derangement of two frames, in every clip
    with pytest.raises(ValueError, match="num_clips"):
        spec(True, clips=3)


def test_train_clip_reproducible_per_sample_and_varies_by_epoch(tmp_path):
    path = grey_ramp_video(tmp_path / "ramp.mp4", frames=40)
    loader = ClipLoader(spec(True, frames=8))
    first = loader(path, index=7, epoch=2)
    assert torch.equal(first, loader(path, index=7, epoch=2))
    assert first.shape == (8, 3, 32, 32)
    picked = frame_index(first)
    assert all(5 * c <= i < 5 * (c + 1) for c, i in enumerate(picked))
    assert any(frame_index(loader(path, 7, e)) != picked for e in range(3, 10))


def test_train_crop_is_random_resized(tmp_path):
    # left half red, right half blue: crops of different boxes give different colour mixes
    frames = np.zeros((8, 64, 64, 3), np.uint8)
    frames[:, :, :32] = (255, 0, 0)
    frames[:, :, 32:] = (0, 0, 255)
    write_video(tmp_path / "halves.mp4", frames)
    loader = ClipLoader(spec(True, frames=2, size=16))
    red_share = {round(float(loader(tmp_path / "halves.mp4", i)[0, 0].mean()), 3) for i in range(8)}
    assert len(red_share) > 1


def test_missing_and_corrupt_files_raise_video_error(tmp_path):
    (tmp_path / "corrupt.mp4").write_bytes(b"not a video" * 50)
    loader = ClipLoader(spec(False))
    for name in ("missing.mp4", "corrupt.mp4"):
        with pytest.raises(VideoError, match=name):
            loader(tmp_path / name, 0)
        with pytest.raises(VideoError, match=name):
            probe_video(tmp_path / name)
        with pytest.raises(VideoError, match=name):
            video_metadata(tmp_path / name)


def test_probe_and_metadata_agree(tmp_path):
    path = grey_ramp_video(tmp_path / "ramp.mp4", frames=24, fps=8)
    for info in (probe_video(path, decode_last=True), video_metadata(path)):
        assert (info.num_frames, info.fps, info.width, info.height) == (24, 8.0, 64, 64)
        assert info.duration_s == pytest.approx(3.0)
