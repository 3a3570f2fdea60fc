"""Live streaming: any hop size reproduces the offline causal model (network + hearing aid)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.apply import Request
from model.hearing_aid import HearingAid
from model.streaming import Streamer
from model.tutti import TuttiConfig, TuttiModel
from tests.test_model import SMALL


def _request() -> Request:
    return Request.from_gains(
        {"Violin_1": 6, "Cello": -3}, np.zeros((2, 8)), [[2.1, 1.5, 1.3, 1.5, 2.4, 3.7]] * 2,
        [[9.6, 11.9, 12.9, 16.4, 19.0, 28.0]] * 2, present=["Violin_1", "Viola", "Cello"])


@pytest.mark.parametrize("hops", [[1, 7, 220, 1000, 33], [220], [128], [4410, 3]])
def test_stream_matches_offline(hops: list[int]) -> None:
    torch.manual_seed(0)
    model = TuttiModel(TuttiConfig(causal=True, **SMALL)).eval()
    torch.nn.init.normal_(model.decoder[-1].up.proj.weight, std=0.05)
    x = (0.02 * np.random.default_rng(0).standard_normal((2, 20_000))).astype(np.float32)
    request = _request()
    gains, presence, listener = request.tensors()
    with torch.no_grad():
        offline = model(torch.from_numpy(x)[None], gains, presence, listener.audiogram,
                        listener.ratio, listener.makeup_db)[0].numpy()
    streamer = Streamer(model, request)
    outs, start, i = [], 0, 0
    while start < x.shape[1]:
        hop = min(hops[i % len(hops)], x.shape[1] - start)
        out = streamer.process(x[:, start : start + hop])
        # Output never runs ahead of the input and lags it by less than one block.
        done = sum(o.shape[1] for o in outs) + out.shape[1]
        assert start + hop - streamer.latency - 1 <= done <= start + hop
        outs.append(out)
        start, i = start + hop, i + 1
    outs.append(streamer.flush())
    streamed = np.concatenate(outs, axis=1)
    assert streamed.shape == offline.shape
    assert np.abs(streamed - offline).max() <= 1e-5


def test_hearing_aid_stream_matches_forward() -> None:
    ha = HearingAid()
    x = 0.2 * np.random.default_rng(1).standard_normal((2, 9000))
    ratio, makeup = [[2.0, 1.5, 1.3, 1.5, 2.4, 3.7]] * 2, [[9.6, 11.9, 12.9, 16.4, 19, 28]] * 2
    whole = ha(torch.from_numpy(x)[None], torch.tensor(ratio)[None], torch.tensor(makeup)[None])
    outs, state = [], None
    for start in range(0, 9000, 700):
        y, state = ha.stream(x[:, start : start + 700], ratio, makeup, state)
        outs.append(y)
    # Float rounding only (the compressor's gain is updated multiplicatively within a block).
    whole = whole[0].numpy()
    assert np.abs(np.concatenate(outs, axis=1) - whole).max() <= 1e-7 * np.abs(whole).max()


def test_noncausal_model_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a causal model"):
        Streamer(TuttiModel(TuttiConfig(causal=False, **SMALL)), _request())
