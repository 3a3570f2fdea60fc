"""Compute behind the endpoints: batched whole-file rebalancing and streamed rebalancing.

Batching (POST /rebalance): jobs up to ``chunk_seconds`` long are zero-padded to a multiple of
``bucket_seconds`` and jobs of the same model and padded length run as one batch through the
network and the hearing aid (each with its own gains and listener). The padding depends on the
job alone, so a job's output never depends on what it was batched with. Causal jobs: padding
after the end changes nothing (the output equals :func:`model.apply.rebalance`). Non-causal
jobs: the model sees up to ``bucket_seconds`` of silence after the end instead of less than one
block, which can change the last ~0.1 s slightly. Longer jobs run alone through
:func:`model.apply.rebalance` (the CLI's windows), which bounds a batch's memory.

Streaming (POST /rebalance/stream): :func:`model.apply.iter_remix` then the hearing aid with
carried state (:meth:`model.hearing_aid.HearingAid.stream`): the same output as
:func:`model.apply.rebalance`, emitted as each window is final.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch

from model.apply import Request, iter_remix, rebalance
from model.audio import SAMPLE_RATE
from model.tutti import Listener, TuttiModel


class Job:
    """One whole-file request for the batch engine: 44.1 kHz ``(2, n)`` float32 input.

    A plain class (not a dataclass) so that BentoML pickles it whole between the services.
    """

    __slots__ = ("mixture", "request", "causal")

    def __init__(self, mixture: np.ndarray, request: Request, causal: bool) -> None:
        self.mixture = mixture
        self.request = request
        self.causal = causal


class Engine:
    """The two shipped models and the batching rules.

    Args:
        models: ``{causal flag: model}``.
        bucket_seconds: padding granularity of batched jobs (s).
        chunk_seconds, overlap_seconds: window of long non-causal jobs (s), as the CLI.
    """

    def __init__(self, models: dict[bool, TuttiModel], bucket_seconds: float = 1.0,
                 chunk_seconds: float = 20.0, overlap_seconds: float = 1.0) -> None:
        self.models = models
        self.chunk_seconds = chunk_seconds
        self.overlap_seconds = overlap_seconds
        block = max(m.config.block for m in models.values())
        self.bucket = max(block, int(bucket_seconds * SAMPLE_RATE) // block * block)
        self.chunk = int(chunk_seconds * SAMPLE_RATE) // block * block

    def warm_up(self, seconds: float = 0.25) -> None:
        """Run each path once on ``seconds`` of quiet noise, so that the first request does
        not pay the one-off costs (loading the hearing aid's numba kernels: ~0.5 s here; the
        first pass of each model)."""
        n = int(seconds * SAMPLE_RATE)
        x = (1e-3 * np.random.default_rng(0).standard_normal((2, n))).astype(np.float32)
        request = Request.normal_hearing({"Violin_1": 0.0, "Cello": 0.0})
        self.run([Job(x, request, causal) for causal in (False, True)])
        for causal in (False, True):
            for _ in self.stream(x, request, causal, seconds):
                pass

    def padded_length(self, job: Job) -> int | None:
        """Length (samples) the job is padded to for batching; None: it runs alone."""
        n = job.mixture.shape[1]
        padded = -(-n // self.bucket) * self.bucket
        return padded if padded <= self.chunk else None

    def run(self, jobs: list[Job]) -> list[np.ndarray]:
        """Hearing-aid outputs ``(2, n)`` float32 at 44.1 kHz, one per job, in order."""
        jobs = [Job(job.mixture, _writable(job.request), job.causal) for job in jobs]
        out: list[np.ndarray | None] = [None] * len(jobs)
        groups: dict[tuple[bool, int], list[int]] = {}
        for i, job in enumerate(jobs):
            padded = self.padded_length(job)
            if padded is None:
                out[i] = rebalance(self.models[job.causal], job.mixture, job.request).astype(
                    np.float32)
            else:
                groups.setdefault((job.causal, padded), []).append(i)
        for (causal, padded), idx in groups.items():
            ys = self._batch(self.models[causal], [jobs[i] for i in idx], padded)
            for i, y in zip(idx, ys, strict=True):
                out[i] = y
        return [o for o in out if o is not None]

    @torch.no_grad()
    def _batch(self, model: TuttiModel, jobs: list[Job], padded: int) -> list[np.ndarray]:
        device = next(model.parameters()).device
        x = np.zeros((len(jobs), 2, padded), dtype=np.float32)
        for b, job in enumerate(jobs):
            x[b, :, : job.mixture.shape[1]] = job.mixture
        tensors = [job.request.tensors() for job in jobs]
        gains = torch.cat([t[0] for t in tensors]).to(device)
        presence = torch.cat([t[1] for t in tensors]).to(device)
        listener = Listener(*(torch.cat([getattr(t[2], k) for t in tensors]).to(device)
                              for k in ("audiogram", "ratio", "makeup_db")))
        xt = torch.from_numpy(x).to(device)
        mixed = model.remix_offline(xt, gains, presence, listener)  # one chunk (<= chunk_seconds)
        ratio = torch.as_tensor(np.stack([j.request.ratio for j in jobs]), dtype=torch.float64)
        makeup = torch.as_tensor(np.stack([j.request.makeup_db for j in jobs]),
                                 dtype=torch.float64)
        y = model.hearing_aid(mixed.double(), ratio.to(device), makeup.to(device))
        y = y.float().cpu().numpy()
        return [y[b, :, : job.mixture.shape[1]] for b, job in enumerate(jobs)]

    def stream(self, mixture: np.ndarray, request: Request, causal: bool,
               causal_chunk_seconds: float = 1.0) -> Iterator[np.ndarray]:
        """:func:`model.apply.rebalance` piece by piece: ``(2, n)`` float32 pieces at 44.1 kHz,
        each yielded as soon as it is final: per window of ``chunk_seconds`` (non-causal, the
        CLI's windows) or per ``causal_chunk_seconds`` of input (causal)."""
        model = self.models[causal]
        chunk = causal_chunk_seconds if causal else self.chunk_seconds
        state = None
        for piece in iter_remix(model, mixture, request, chunk, self.overlap_seconds):
            y, state = model.hearing_aid.stream(piece, request.ratio, request.makeup_db, state)
            yield y.astype(np.float32)


def _writable(request: Request) -> Request:
    """A copy with writable arrays (unpickled buffers are read-only; torch warns on those)."""
    return dataclasses.replace(request, **{f.name: np.array(getattr(request, f.name))
                                           for f in dataclasses.fields(request)})
