"""The whole purification captured as a CUDA graph: ``GraphedPurifier``.

One replay runs every round of a purification (the batched 2B model calls, the fused ops, the
re-noising) with no host sync and no Python in between. Graphs are cached per ``GraphKey``:
(batch, C, H, W, device, config, model, precision, backend, noise mode).

Example::

    graphed = GraphedPurifier(purifier)                        # fp32-faithful, latency mode
    x_pure = graphed.purify(x, generator=g)                    # [B, C, H, W] in [0, 1], a fresh tensor
    fast = GraphedPurifier(purifier, precision="bf16", mode="throughput", max_batch=512)
    runs = fast.purify_ensemble(x, runs=10)                    # [10, B, C, H, W], one batched E*B call

Randomness. Every replay draws fresh noise, from the same stream the eager ``Purifier`` uses:
- ``generator=None`` (or ``noise=GlobalNoise()``): the device's global generator, so
  ``torch.manual_seed(s)`` reproduces the output, and it equals eager ``Purifier.purify`` run
  after the same seed (up to kernel-selection round-off);
- ``generator=g``: that generator, advanced exactly as the eager purifier would advance it;
- ``noise=RecordedNoise(...)``: the recorded tensors are copied into the graph's static noise
  buffers (a second graph variant), so the graph reproduces the eager result given the same
  noise. Per-sample generators are not supported here (use the eager ``Purifier``).

The graph draws from a generator it owns and registers for graph-safe state; around each replay
the caller's generator state is copied in and back (two small host-side copies, no sync).

Modes:
- ``"latency"`` (default): one graph per exact batch size; made for B from 1 to 8.
- ``"throughput"``: batches are cut into chunks of ``max_batch`` images and the last chunk is
  padded up to a power of two, so a few graphs serve every batch size. Padding rows are zeros;
  their results are dropped. Each image's result is independent of the other rows.

Inputs are validated as in ``Purifier.purify`` (one sync, before the replay). The computation is
fp32 whatever the input dtype (fp16/bf16/fp64 inputs are cast in and the result cast back).
Graphs are inference-only: inputs that require grad with grad mode on raise (attack through the
eager ``Purifier``, which is differentiable).

Memory: all graphs of one GraphedPurifier share one memory pool. This is safe because replays are
serialised on one stream, every persistent tensor (static inputs, noise buffers, tables warmed
up before capture) lives outside the pool, and each replay's output is copied out immediately.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import PurifierConfig
from .noise import GeneratorNoise, GlobalNoise, NoiseSource, RecordedNoise, draw_labels
from .precision import PRECISIONS, prepare_model
from .purifier import Purifier, purify_images
from .validation import check_images, model_device

MODES = ("latency", "throughput")
NOISE_MODES = ("generator", "recorded")
DEFAULT_THROUGHPUT_CHUNK = 256


@dataclass(frozen=True)
class GraphKey:
    """What a captured graph is specific to. ``model`` is the model's identity and a fingerprint
    of its parameter storage (see ``model_fingerprint``)."""

    batch: int
    channels: int
    height: int
    width: int
    device: str
    config: PurifierConfig
    model: tuple
    precision: str
    backend: str | None
    noise: str


@dataclass(frozen=True)
class Chunk:
    """Rows ``[start, stop)`` of a batch, run by the graph captured for ``graph_batch`` rows
    (``graph_batch - (stop - start)`` padding rows)."""

    start: int
    stop: int
    graph_batch: int


def graph_batch_size(rows: int, mode: str, max_batch: int | None) -> int:
    """The batch size of the graph that runs ``rows`` images: exact in latency mode; the next
    power of two, capped at ``max_batch``, in throughput mode."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    if mode == "latency":
        return rows
    bucket = 1 << math.ceil(math.log2(rows))
    return min(bucket, max_batch) if max_batch is not None else bucket


def plan_chunks(batch: int, mode: str, max_batch: int | None) -> list[Chunk]:
    """Cut a batch into graph replays: chunks of at most ``max_batch`` rows (one chunk when
    ``max_batch`` is None), each with the graph batch size that runs it. Every row is covered
    exactly once."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    step = batch if max_batch is None else max_batch
    return [
        Chunk(start, min(start + step, batch), graph_batch_size(min(step, batch - start), mode, max_batch))
        for start in range(0, batch, step)
    ]


def model_fingerprint(model, include_versions: bool) -> tuple:
    """Identity plus the storage of every parameter and buffer: it changes when the model is
    moved or converted (a captured graph would read stale memory) and, with
    ``include_versions``, when its weights are changed in place (a converted copy is stale)."""
    if not isinstance(model, torch.nn.Module):
        return (id(model),)
    tensors = list(model.parameters()) + list(model.buffers())
    storage = tuple(t.data_ptr() for t in tensors)
    versions = tuple(t._version for t in tensors) if include_versions else ()
    return (id(model), hash(storage), hash(versions))


class _BufferNoise:
    """Hands out static noise buffers in the draw plan's order (the recorded-noise graphs)."""

    def __init__(self, buffers: list[torch.Tensor], labels: tuple[str, ...]):
        self.buffers, self.labels, self.position = buffers, labels, 0

    def draw(self, label: str, like: torch.Tensor) -> torch.Tensor:
        if self.labels[self.position] != label:  # the plan and the sampler disagree: a bug here
            raise RuntimeError(f"noise plan expected {self.labels[self.position]!r}, sampler drew {label!r}")
        buffer = self.buffers[self.position]
        self.position += 1
        return buffer


class _CapturedPurification:
    """Static buffers and (when capturing) one CUDA graph for one GraphKey."""

    def __init__(
        self,
        body: Callable[[torch.Tensor, NoiseSource], torch.Tensor],
        key: GraphKey,
        work_shape: tuple[int, int, int, int],
        labels: tuple[str, ...],
        generator: torch.Generator,
        pool,
        capture: bool,
        warmup: int,
    ):
        device = torch.device(key.device)
        self.x = torch.zeros((key.batch, key.channels, key.height, key.width), device=device)
        self.noise = (
            [torch.zeros(work_shape, device=device) for _ in labels] if key.noise == "recorded" else []
        )
        self.labels = labels
        self._generator = generator
        self._body = body
        self.graph = None
        self.out: torch.Tensor | None = None
        if not capture:
            return
        # Warm up on a side stream so autotuning, Triton compilation and cuDNN/cuFFT plans are
        # settled (and their tables allocated) outside the capture.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):
                self._run_body()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if key.noise == "generator":
            if not hasattr(graph, "register_generator_state"):
                raise RuntimeError(
                    f"torch {torch.__version__} cannot register a generator for graph capture; "
                    "use noise=RecordedNoise(...) or capture=False"
                )
            graph.register_generator_state(generator)
        try:
            with torch.no_grad(), torch.cuda.graph(graph, pool=pool):
                self.out = self._run_body()
        except RuntimeError as error:
            raise RuntimeError(
                f"capturing the purification failed ({error}); the model may sync with the host "
                "or use CPU tensors inside forward. GraphedPurifier(..., capture=False) runs the "
                "same plan without a graph"
            ) from error
        self.graph = graph

    def _run_body(self) -> torch.Tensor:
        if self.noise:
            source: NoiseSource = _BufferNoise(self.noise, self.labels)
        else:
            source = GeneratorNoise(self._generator)
        return self._body(self.x, source)

    def run(self) -> torch.Tensor:
        if self.graph is not None:
            self.graph.replay()
        else:
            with torch.no_grad():
                self.out = self._run_body()
        return self.out


def _global_generator(device: torch.device) -> torch.Generator:
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else 0]
    return torch.default_generator


class GraphedPurifier:
    """A ``Purifier`` run as captured CUDA graphs (see the module docstring).

    precision: "fp32" (faithful to the reference path) or "bf16" (a bf16 copy of the model,
    channels_last if ``channels_last``; the spectral math stays fp32).
    mode / max_batch: "latency" (exact batch sizes; chunks of ``max_batch`` if given) or
    "throughput" (chunks of ``max_batch``, default 256, padded to powers of two).
    compile_model: ``torch.compile`` the model before capture (slow first call).
    capture: capture CUDA graphs (default: when the model is on a CUDA device). ``False`` runs
    the same static-buffer plan eagerly, on any device: for debugging, and for the CPU tests.
    warmup: eager runs on a side stream before each capture. max_graphs: graphs kept (LRU).
    """

    def __init__(
        self,
        purifier: Purifier,
        *,
        precision: str = "fp32",
        mode: str = "latency",
        max_batch: int | None = None,
        channels_last: bool = True,
        compile_model: bool = False,
        capture: bool | None = None,
        warmup: int = 2,
        max_graphs: int = 16,
    ):
        if not isinstance(purifier, Purifier):
            raise TypeError(f"purifier must be a Purifier, got {type(purifier).__name__}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"max_batch must be a positive int or None, got {max_batch!r}")
        device = model_device(purifier.eps_model)
        if device is None:
            raise TypeError("GraphedPurifier needs the diffusion model as an nn.Module (to know its device)")
        if capture is None:
            capture = device.type == "cuda"
        if capture and device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device, not {device}; pass capture=False")
        if not isinstance(warmup, int) or warmup < 1 or not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"warmup and max_graphs must be ints >= 1, got {warmup!r}, {max_graphs!r}")
        self.purifier = purifier
        self.precision = precision
        self.mode = mode
        self.max_batch = DEFAULT_THROUGHPUT_CHUNK if mode == "throughput" and max_batch is None else max_batch
        self.channels_last = channels_last
        self.compile_model = compile_model
        self.capture = capture
        self.warmup = warmup
        self.max_graphs = max_graphs
        self.device = device
        # The graphs' own generator; callers' generator states are copied in and out of it.
        self._generator = torch.Generator(device=device)
        self._pool = torch.cuda.graph_pool_handle() if capture else None
        self._graphs: OrderedDict[GraphKey, _CapturedPurification] = OrderedDict()
        self._model = None
        self._model_key: tuple | None = None

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        """Drop every captured graph (and the model copy); the next call captures afresh."""
        self._graphs.clear()
        self._model, self._model_key = None, None

    def _current_model(self):
        eps_model = self.purifier.eps_model
        fingerprint = model_fingerprint(eps_model, include_versions=self.precision != "fp32")
        if fingerprint != self._model_key:
            self.clear()
            self._model = prepare_model(
                eps_model, self.precision, channels_last=self.channels_last, compile_model=self.compile_model
            )
            self._model_key = fingerprint
        return self._model, fingerprint

    def graph_key(
        self, batch: int, image_shape: tuple[int, int, int], noise_mode: str, fingerprint: tuple | None = None
    ) -> GraphKey:
        if fingerprint is None:
            _, fingerprint = self._current_model()
        channels, height, width = image_shape
        return GraphKey(
            batch=batch,
            channels=channels,
            height=height,
            width=width,
            device=str(self.device),
            config=self.purifier.config,
            model=fingerprint,
            precision=self.precision,
            backend=self.purifier.backend,
            noise=noise_mode,
        )

    def _work_shape(self, batch: int, image_shape: tuple[int, int, int]) -> tuple[int, int, int, int]:
        channels, height, width = image_shape
        resolution = self.purifier.config.model_resolution
        return (batch, channels, *(resolution if resolution is not None else (height, width)))

    def _graph(self, key: GraphKey) -> _CapturedPurification:
        if key in self._graphs:
            self._graphs.move_to_end(key)
            return self._graphs[key]
        model, _ = self._current_model()
        config, backend = self.purifier.config, self.purifier.backend
        runner = _CapturedPurification(
            lambda x, noise: purify_images(model, x, config, noise, backend),
            key,
            self._work_shape(key.batch, (key.channels, key.height, key.width)),
            draw_labels(config),
            self._generator,
            self._pool,
            self.capture,
            self.warmup,
        )
        self._graphs[key] = runner
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return runner

    def _noise_plan(self, generator, noise, x: torch.Tensor):
        """("generator", source generator, None) or ("recorded", None, [full-batch tensors])."""
        if generator is not None and noise is not None:
            raise ValueError("pass either generator= or noise=, not both")
        if isinstance(noise, GeneratorNoise):
            if noise.generators is not None:
                raise ValueError(
                    "GraphedPurifier draws from one generator; per-sample generators need Purifier"
                )
            generator, noise = noise.generator, None
        if isinstance(noise, RecordedNoise):
            like = torch.empty(self._work_shape(x.shape[0], tuple(x.shape[1:])), device=x.device)
            labels = draw_labels(self.purifier.config)
            if noise.remaining < len(labels):
                raise ValueError(
                    f"recorded noise has {noise.remaining} draws left; one purification needs {len(labels)}"
                )
            tensors = [noise.draw(label, like) for label in labels]
            return "recorded", None, tensors
        if noise is not None and not isinstance(noise, GlobalNoise):
            raise TypeError(
                "GraphedPurifier takes generator=, noise=GlobalNoise(), noise=GeneratorNoise(one generator) "
                f"or noise=RecordedNoise(...), got {type(noise).__name__}"
            )
        if generator is None:
            return "generator", _global_generator(x.device), None
        if not isinstance(generator, torch.Generator):
            raise ValueError(
                "GraphedPurifier draws from one torch.Generator; per-sample generators need Purifier"
            )
        if generator.device.type != x.device.type:
            raise ValueError(
                f"generator is on {generator.device} but the images are on {x.device}; "
                f"create it with torch.Generator(device='{x.device.type}')"
            )
        return "generator", generator, None

    def purify(
        self,
        x: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: NoiseSource | None = None,
        clamp: bool = False,
        check_values: bool = True,
    ) -> torch.Tensor:
        """Purify ``x: [B, C, H, W]`` in [0, 1]: a fresh tensor of the same shape and dtype."""
        if torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad:
            raise ValueError(
                "GraphedPurifier is inference-only and x requires grad; attack through the eager "
                "Purifier (differentiable), or call under torch.no_grad()"
            )
        x = check_images(
            x, channels=self.purifier.in_channels, device=self.device, clamp=clamp, check_values=check_values
        )
        noise_mode, source_generator, recorded = self._noise_plan(generator, noise, x)
        image_shape = tuple(x.shape[1:])
        _, fingerprint = self._current_model()
        out = torch.empty_like(x)
        for chunk in plan_chunks(x.shape[0], self.mode, self.max_batch):
            rows = chunk.stop - chunk.start
            runner = self._graph(self.graph_key(chunk.graph_batch, image_shape, noise_mode, fingerprint))
            runner.x[:rows].copy_(x[chunk.start : chunk.stop])
            runner.x[rows:].zero_()
            for buffer, tensor in zip(runner.noise, recorded or ()):
                buffer[:rows].copy_(tensor[chunk.start : chunk.stop])
                buffer[rows:].zero_()
            if source_generator is not None:
                self._generator.set_state(source_generator.get_state())
            result = runner.run()
            if source_generator is not None:
                source_generator.set_state(self._generator.get_state())
            out[chunk.start : chunk.stop].copy_(result[:rows])
        return out

    def purify_ensemble(self, x: torch.Tensor, runs: int, **kwargs) -> torch.Tensor:
        """``runs`` independent purifications of ``x`` as one batched call on ``runs * B`` images
        (chunked by ``max_batch``): returns ``[runs, B, C, H, W]``. Recorded noise, if given,
        must be shaped for the ``runs * B`` batch (run r is rows ``r*B .. (r+1)*B``)."""
        if not isinstance(runs, int) or runs < 1:
            raise ValueError(f"runs must be an int >= 1, got {runs!r}")
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"x must have shape [B, C, H, W], got {getattr(x, 'shape', type(x).__name__)}")
        out = self.purify(x.repeat(runs, 1, 1, 1), **kwargs)
        return out.view(runs, *x.shape)

    def __call__(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.purify(x, **kwargs)
