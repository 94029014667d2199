"""GraphedPurifier: the chunk plan, the cache keys, the noise plan and the static-buffer body on
the CPU (capture=False runs exactly what a graph captures); capture and replay on a GPU.

The CPU tests use the reference backend except where they compare against eager with the fused
(interpreted) ops; the fused ops' own parity is tested in test_triton_ops.py."""

from __future__ import annotations

import pytest
import torch
from conftest import LinearEps

from manipure_fast import (
    DefendedClassifier,
    GeneratorNoise,
    GlobalNoise,
    GraphedPurifier,
    Purifier,
    PurifierConfig,
    RecordedNoise,
    Round,
)
from manipure_fast.graphs import Chunk, graph_batch_size, model_fingerprint, plan_chunks
from manipure_fast.noise import draw_labels
from manipure_fast.precision import LowPrecisionEpsModel, prepare_model
from manipure_fast.reference import purify_diffusion as reference_purify
from manipure_fast.sampler import purify_diffusion as production_purify

CONFIGS = {
    "default-two-rounds": PurifierConfig(rounds=(Round.from_total(100, 3), Round.from_total(40, 2))),
    "input-reference": PurifierConfig(rounds=(Round.from_total(60, 2),), reference="input"),
    "diffpure": PurifierConfig(rounds=(Round.from_total(60, 3),), mani=False, exchange=False),
    "ddim-uniform": PurifierConfig(rounds=(Round.from_total(30, 2),) * 2, mani=False, sampling="ddim"),
}


class LabelLog:
    """Records the labels a sampler asks for, drawing real noise."""

    def __init__(self):
        self.labels = []

    def draw(self, label, like):
        self.labels.append(label)
        return torch.randn_like(like)


# ---- plan logic ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2, 5, 8, 63, 64, 65, 511, 1000])
@pytest.mark.parametrize("mode,max_batch", [("latency", None), ("latency", 16), ("throughput", 64)])
def test_chunks_cover_every_row_once(batch, mode, max_batch):
    chunks = plan_chunks(batch, mode, max_batch)
    covered = [row for c in chunks for row in range(c.start, c.stop)]
    assert covered == list(range(batch))
    for c in chunks:
        rows = c.stop - c.start
        assert rows <= c.graph_batch
        if max_batch is not None:
            assert c.graph_batch <= max_batch
        if mode == "latency":
            assert c.graph_batch == rows


def test_throughput_chunks_pad_to_powers_of_two():
    assert plan_chunks(300, "throughput", 128) == [
        Chunk(0, 128, 128),
        Chunk(128, 256, 128),
        Chunk(256, 300, 64),
    ]
    assert [graph_batch_size(n, "throughput", 256) for n in (1, 3, 4, 5, 200, 256)] == [1, 4, 4, 8, 256, 256]
    # few distinct graphs serve every batch size
    sizes = {c.graph_batch for b in range(1, 513) for c in plan_chunks(b, "throughput", 256)}
    assert sizes == {1, 2, 4, 8, 16, 32, 64, 128, 256}


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        plan_chunks(4, "fast", None)
    with pytest.raises(ValueError, match="batch"):
        plan_chunks(0, "latency", None)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_draw_plan_matches_both_samplers(name):
    config = CONFIGS[name]
    model = LinearEps(3)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    for sampler in (reference_purify, lambda m, x, c, n: production_purify(m, x, c, n, backend="reference")):
        log = LabelLog()
        with torch.no_grad():
            sampler(model, x, config, log)
        assert tuple(log.labels) == draw_labels(config)


def test_graph_keys_separate_what_a_graph_depends_on():
    model = LinearEps(3)
    graphed = GraphedPurifier(
        Purifier(model, CONFIGS["default-two-rounds"], backend="reference"), capture=False
    )
    key = graphed.graph_key(4, (3, 8, 8), "generator")
    assert key == graphed.graph_key(4, (3, 8, 8), "generator")
    assert hash(key) == hash(graphed.graph_key(4, (3, 8, 8), "generator"))
    others = [
        graphed.graph_key(5, (3, 8, 8), "generator"),
        graphed.graph_key(4, (3, 8, 16), "generator"),
        graphed.graph_key(4, (3, 8, 8), "recorded"),
    ]
    graphed.purifier.config = CONFIGS["input-reference"]
    others.append(graphed.graph_key(4, (3, 8, 8), "generator"))
    assert all(other != key for other in others)


def test_model_fingerprint_tracks_storage_and_in_place_changes():
    model = LinearEps(3)
    before = model_fingerprint(model, include_versions=True)
    assert model_fingerprint(model, include_versions=True) == before
    with torch.no_grad():
        model.conv.weight.mul_(2)  # same storage, new version
    assert model_fingerprint(model, include_versions=True) != before
    assert model_fingerprint(model, include_versions=False) == model_fingerprint(
        model, include_versions=False
    )
    storage = model_fingerprint(model, include_versions=False)
    model.double()  # new storage: a captured graph would read freed memory
    assert model_fingerprint(model, include_versions=False) != storage


# ---- the static-buffer body (what a graph captures), on the CPU ---------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_body_equals_eager_given_the_same_generator(name):
    purifier = Purifier(LinearEps(3), CONFIGS[name], backend="auto")
    graphed = GraphedPurifier(purifier, capture=False)
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        g_eager, g_graph = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        eager = purifier.purify(x, generator=g_eager)
        graph = graphed.purify(x, generator=g_graph)
    torch.testing.assert_close(graph, eager, rtol=0, atol=1e-6)
    # the caller's generator advanced exactly as the eager purifier advances it
    assert torch.equal(g_eager.get_state(), g_graph.get_state())


def test_body_uses_the_global_rng_like_eager():
    purifier = Purifier(LinearEps(3), CONFIGS["default-two-rounds"], backend="reference")
    graphed = GraphedPurifier(purifier, capture=False)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.manual_seed(11)
        eager = purifier.purify(x)
        torch.manual_seed(11)
        graph = graphed.purify(x)
        torch.manual_seed(11)
        via_source = graphed.purify(x, noise=GlobalNoise())
        fresh = graphed.purify(x)
    torch.testing.assert_close(graph, eager, rtol=0, atol=1e-6)
    torch.testing.assert_close(via_source, eager, rtol=0, atol=1e-6)
    assert not torch.allclose(fresh, eager)


@pytest.mark.parametrize("mode,max_batch", [("latency", None), ("latency", 2), ("throughput", 4)])
def test_body_equals_eager_given_recorded_noise_with_chunking(mode, max_batch):
    config = CONFIGS["default-two-rounds"]
    purifier = Purifier(LinearEps(3), config, backend="reference")
    graphed = GraphedPurifier(purifier, capture=False, mode=mode, max_batch=max_batch)
    x = torch.rand(7, 3, 8, 8)
    labels = draw_labels(config)
    recorded = [torch.randn(7, 3, 8, 8) for _ in labels]
    with torch.no_grad():
        eager = purifier.purify(x, noise=RecordedNoise(recorded, labels))
        graph = graphed.purify(x, noise=RecordedNoise(recorded, labels))
    torch.testing.assert_close(graph, eager, rtol=0, atol=1e-5)
    assert graph.dtype == x.dtype and graph.shape == x.shape


def test_body_with_model_resolution_and_half_inputs():
    config = CONFIGS["default-two-rounds"].replace(model_resolution=(16, 16))
    purifier = Purifier(LinearEps(3), config, backend="reference")
    graphed = GraphedPurifier(purifier, capture=False)
    x = torch.rand(2, 3, 12, 12).to(torch.bfloat16)
    labels = draw_labels(config)
    recorded = [torch.randn(2, 3, 16, 16) for _ in labels]
    with torch.no_grad():
        eager = purifier.purify(x, noise=RecordedNoise(recorded, labels))
        graph = graphed.purify(x, noise=RecordedNoise(recorded, labels))
    assert graph.dtype == torch.bfloat16 and graph.shape == (2, 3, 12, 12)
    torch.testing.assert_close(graph, eager, rtol=0, atol=1e-2)


def test_ensemble_is_one_batched_call_of_independent_runs():
    purifier = Purifier(LinearEps(3), CONFIGS["default-two-rounds"], backend="reference")
    graphed = GraphedPurifier(purifier, capture=False, mode="throughput", max_batch=4)
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        runs = graphed.purify_ensemble(x, runs=4, generator=torch.Generator().manual_seed(0))
        again = graphed.purify_ensemble(x, runs=4, generator=torch.Generator().manual_seed(0))
    assert runs.shape == (4, 3, 3, 8, 8)
    torch.testing.assert_close(runs, again, rtol=0, atol=0)
    assert not torch.allclose(runs[0], runs[1])  # members draw different noise


def test_defended_classifier_batches_runs():
    purifier = Purifier(LinearEps(3), CONFIGS["default-two-rounds"], backend="reference")
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x = torch.rand(3, 3, 8, 8)
    sequential = DefendedClassifier(purifier, classifier, num_ensemble_runs=5)
    batched = DefendedClassifier(purifier, classifier, num_ensemble_runs=5, batch_runs=True)
    graphed = DefendedClassifier(GraphedPurifier(purifier, capture=False), classifier, 5, batch_runs=True)
    with torch.no_grad():
        votes = [
            d.vote(x, generator=torch.Generator().manual_seed(1)) for d in (sequential, batched, graphed)
        ]
    for vote in votes:
        assert vote.prediction.shape == (3,) and vote.logits.shape == (3, 4)
        assert torch.equal(vote.counts.sum(dim=1), torch.full((3,), 5))
    torch.testing.assert_close(votes[2].logits, votes[1].logits, rtol=0, atol=1e-5)
    # batched runs are E*B images in one call: the same E*B-shaped recorded noise reproduces it
    labels = draw_labels(purifier.config)
    recorded = [torch.randn(15, 3, 8, 8) for _ in labels]
    with torch.no_grad():
        a = batched.vote(x, noise=RecordedNoise(recorded, labels))
        b = graphed.vote(x, noise=RecordedNoise(recorded, labels))
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=1e-5)


def test_bf16_model_mode_keeps_spectral_math_fp32():
    model = LinearEps(3)
    fast = prepare_model(model, "bf16", channels_last=True)
    assert isinstance(fast, LowPrecisionEpsModel) and fast.in_channels == 3
    assert next(fast.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32  # the source model is untouched
    x, t = torch.randn(2, 3, 8, 8), torch.full((2,), 10.0)
    out = fast(x, t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model(x, t), rtol=0.05, atol=0.05)
    config = CONFIGS["default-two-rounds"]
    purifier = Purifier(model, config, backend="reference")
    labels = draw_labels(config)
    recorded = [torch.randn(2, 3, 8, 8) for _ in labels]
    graphed = GraphedPurifier(purifier, capture=False, precision="bf16")
    with torch.no_grad():
        eager = purifier.purify(x.sigmoid(), noise=RecordedNoise(recorded, labels))
        low = graphed.purify(x.sigmoid(), noise=RecordedNoise(recorded, labels))
    assert low.dtype == torch.float32
    assert (low - eager).abs().max() < 0.1


def test_bf16_copy_is_rebuilt_when_the_weights_change():
    model = LinearEps(3)
    graphed = GraphedPurifier(
        Purifier(model, CONFIGS["diffpure"], backend="reference"), capture=False, precision="bf16"
    )
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        graphed.purify(x)
        assert graphed.num_graphs == 1
        first = graphed._model
        model.conv.weight.mul_(0.5)
        graphed.purify(x)
    assert graphed._model is not first
    torch.testing.assert_close(
        graphed._model.inner.conv.weight.float(), model.conv.weight, rtol=1e-2, atol=1e-3
    )


def test_graphed_purifier_errors_are_named():
    purifier = Purifier(LinearEps(3), CONFIGS["diffpure"], backend="reference")
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedPurifier(purifier, capture=True)
    with pytest.raises(ValueError, match="precision"):
        GraphedPurifier(purifier, precision="fp8", capture=False)
    with pytest.raises(ValueError, match="max_batch"):
        GraphedPurifier(purifier, max_batch=0, capture=False)
    with pytest.raises(TypeError, match="nn.Module"):
        GraphedPurifier(Purifier(lambda x, t: x, CONFIGS["diffpure"], backend="reference"), capture=False)
    graphed = GraphedPurifier(purifier, capture=False)
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="inference-only"):
        graphed.purify(x.clone().requires_grad_())
    with pytest.raises(ValueError, match="per-sample"):
        graphed.purify(x, generator=[torch.Generator(), torch.Generator()])
    with pytest.raises(ValueError, match="per-sample"):
        graphed.purify(x, noise=GeneratorNoise([torch.Generator(), torch.Generator()]))
    with pytest.raises(ValueError, match="channels"):
        graphed.purify(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="non-finite"):
        graphed.purify(torch.full((2, 3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="draws left"):
        graphed.purify(x, noise=RecordedNoise([torch.randn(2, 3, 8, 8)]))
    with pytest.raises(TypeError, match="RecordedNoise"):
        graphed.purify(x, noise=LabelLog())


# ---- on a GPU: capture and replay ---------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def _gpu_purifier(backend="auto"):
    torch.manual_seed(0)
    model = LinearEps(3).cuda()
    return Purifier(model, CONFIGS["default-two-rounds"], backend=backend)


@cuda
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_graph_equals_eager_given_the_same_noise(backend):
    purifier = _gpu_purifier(backend)
    graphed = GraphedPurifier(purifier)
    x = torch.rand(7, 3, 32, 32, device="cuda")
    labels = draw_labels(purifier.config)
    recorded = [torch.randn(7, 3, 32, 32, device="cuda") for _ in labels]
    with torch.no_grad():
        eager = purifier.purify(x, noise=RecordedNoise(recorded, labels))
        graph = graphed.purify(x, noise=RecordedNoise(recorded, labels))
        seeded_eager = purifier.purify(x, generator=torch.Generator("cuda").manual_seed(3))
        seeded_graph = graphed.purify(x, generator=torch.Generator("cuda").manual_seed(3))
    torch.testing.assert_close(graph, eager, rtol=0, atol=1e-5)
    torch.testing.assert_close(seeded_graph, seeded_eager, rtol=0, atol=1e-5)
    assert graphed._graphs and all(r.graph is not None for r in graphed._graphs.values())


@cuda
def test_replays_draw_fresh_noise_and_seeds_reproduce():
    graphed = GraphedPurifier(_gpu_purifier())
    x = torch.rand(4, 3, 32, 32, device="cuda")
    with torch.no_grad():
        first, second = graphed.purify(x), graphed.purify(x)
        a = graphed.purify(x, generator=torch.Generator("cuda").manual_seed(9))
        b = graphed.purify(x, generator=torch.Generator("cuda").manual_seed(9))
    assert not torch.allclose(first, second)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert graphed.num_graphs == 1


@cuda
def test_memory_stays_flat_over_100_replays():
    graphed = GraphedPurifier(_gpu_purifier())
    x = torch.rand(8, 3, 32, 32, device="cuda")
    with torch.no_grad():
        graphed.purify(x)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        for _ in range(100):
            graphed.purify(x)
        torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before


@cuda
def test_throughput_mode_captures_few_graphs_and_matches_eager():
    purifier = _gpu_purifier()
    graphed = GraphedPurifier(purifier, mode="throughput", max_batch=8)
    labels = draw_labels(purifier.config)
    with torch.no_grad():
        for batch in (1, 3, 8, 13):
            x = torch.rand(batch, 3, 32, 32, device="cuda")
            recorded = [torch.randn(batch, 3, 32, 32, device="cuda") for _ in labels]
            eager = purifier.purify(x, noise=RecordedNoise(recorded, labels))
            graph = graphed.purify(x, noise=RecordedNoise(recorded, labels))
            torch.testing.assert_close(graph, eager, rtol=0, atol=1e-5)
    assert graphed.num_graphs == 3  # graph batches 1, 4 and 8 (13 = 8 + 5 padded to 8)


@cuda
def test_bf16_graph_runs_and_stays_close():
    purifier = _gpu_purifier()
    graphed = GraphedPurifier(purifier, precision="bf16")
    x = torch.rand(4, 3, 32, 32, device="cuda")
    labels = draw_labels(purifier.config)
    recorded = [torch.randn(4, 3, 32, 32, device="cuda") for _ in labels]
    with torch.no_grad():
        eager = purifier.purify(x, noise=RecordedNoise(recorded, labels))
        low = graphed.purify(x, noise=RecordedNoise(recorded, labels))
    assert (low - eager).abs().max() < 0.1
