"""Our DDPM++ and ADM modules against the reference checkpoints' fixtures (issue: load the
reference purifier's diffusion checkpoints without its code)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES, load_fixture

from manipure_fast import Purifier, PurifierConfig, Round
from manipure_fast.models.adm import ADMConfig, ADMUNet
from manipure_fast.models.checkpoints import CheckpointError, load_adm_checkpoint, load_ddpmpp_checkpoint
from manipure_fast.models.ddpmpp import DDPMpp, DDPMppConfig


def _manifest(name):
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"manifest {path} is absent")
    return json.loads(path.read_text())


def _close(out, expected):
    assert torch.allclose(out, expected, rtol=1e-4, atol=1e-5), (out - expected).abs().max()


def test_ddpmpp_tiny_loads_the_ema_and_reproduces_outputs(tmp_path):
    fixture = load_fixture("ddpmpp_tiny.pt")
    model = load_ddpmpp_checkpoint(FIXTURES / "ddpmpp_tiny.pt", fixture["fixture"]["config"])
    assert sum(p.numel() for p in model.parameters()) == fixture["fixture"]["total_parameter_count"]
    with torch.no_grad():
        for pair in fixture["fixture"]["pairs"]:
            out = model(pair["x"], pair["t"])
            _close(out, pair["eps"])
            # The raw (non-EMA) weights would give something else entirely.
            assert (out - pair["eps_if_model_weights_used"]).abs().max() > 0.1


def test_ddpmpp_state_dict_layout_matches_original():
    fixture = load_fixture("ddpmpp_tiny.pt")["fixture"]
    model = DDPMpp(DDPMppConfig.from_score_sde(fixture["config"]))
    assert [
        (k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()
    ] == [(k, s, d) for k, s, d, _ in fixture["state_dict_keys"]]


def test_adm_tiny_reproduces_outputs():
    fixture = load_fixture("adm_tiny.pt")
    model = ADMUNet(ADMConfig.from_guided_diffusion(fixture["model_config"])).eval()
    model.load_state_dict(fixture["state_dict"], strict=True)
    with torch.no_grad():
        for pair in fixture["pairs"]:
            _close(model(pair["x"], pair["t"]), pair["output"])


def test_adm_loader_from_plain_state_dict(tmp_path):
    fixture = load_fixture("adm_tiny.pt")
    path = tmp_path / "adm.pt"
    torch.save(fixture["state_dict"], path)
    model = load_adm_checkpoint(path, fixture["model_config"])
    with torch.no_grad():
        _close(model(fixture["pairs"][0]["x"], fixture["pairs"][0]["t"]), fixture["pairs"][0]["output"])


def test_full_size_ddpmpp_on_meta_matches_manifest():
    manifest = _manifest("ddpmpp_cifar10_manifest.json")
    with torch.device("meta"):
        model = DDPMpp(DDPMppConfig.from_score_sde(manifest["config"]))
    assert sum(p.numel() for p in model.parameters()) == manifest["total_parameter_count"] == 106_632_579
    assert [[n, list(p.shape)] for n, p in model.named_parameters()] == manifest["parameters_in_order"]
    assert DDPMppConfig.from_score_sde(manifest["config"]) == DDPMppConfig()


def test_full_size_adm_on_meta_matches_manifest():
    manifest = _manifest("adm256_manifest.json")
    with torch.device("meta"):
        model = ADMUNet(ADMConfig.from_guided_diffusion(manifest["model_config"]))
    assert sum(p.numel() for p in model.parameters()) == manifest["total_parameter_count"] == 552_814_086
    assert [[n, list(p.shape)] for n, p in model.named_parameters()] == manifest["parameters_in_order"]
    assert ADMConfig.from_guided_diffusion(manifest["model_config"]) == ADMConfig()


def test_truncated_ema_names_first_missing_tensor(tmp_path):
    checkpoint = load_fixture("ddpmpp_tiny.pt")
    config = checkpoint["fixture"]["config"]
    checkpoint["ema"]["shadow_params"] = checkpoint["ema"]["shadow_params"][:-2]
    torch.save(checkpoint, tmp_path / "short.pth")
    with pytest.raises(
        CheckpointError,
        match=r"268 tensors but the model has 270 parameters; first missing: "
        r"all_modules\.\d+\.weight",
    ):
        load_ddpmpp_checkpoint(tmp_path / "short.pth", config)


def test_wrong_shape_names_the_tensor(tmp_path):
    checkpoint = load_fixture("ddpmpp_tiny.pt")
    config = checkpoint["fixture"]["config"]
    checkpoint["ema"]["shadow_params"][3] = torch.zeros(7)
    torch.save(checkpoint, tmp_path / "bad.pth")
    with pytest.raises(
        CheckpointError, match=r"tensor 3 \(all_modules\.1\.bias\) has shape \[7\], expected \[64\]"
    ):
        load_ddpmpp_checkpoint(tmp_path / "bad.pth", config)


def test_checkpoint_without_ema_is_refused(tmp_path):
    checkpoint = load_fixture("ddpmpp_tiny.pt")
    del checkpoint["ema"]
    torch.save(checkpoint, tmp_path / "noema.pth")
    with pytest.raises(CheckpointError, match="raw 'model' weights are deliberately not used"):
        load_ddpmpp_checkpoint(tmp_path / "noema.pth", checkpoint["fixture"]["config"])


def test_corrupt_file_and_wrong_adm_key(tmp_path):
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="could not read checkpoint"):
        load_adm_checkpoint(tmp_path / "corrupt.pt")
    fixture = load_fixture("adm_tiny.pt")
    state = dict(fixture["state_dict"])
    state["input_blocks.1.0.in_layers.0.weight"] = torch.zeros(5)
    torch.save(state, tmp_path / "adm_bad.pt")
    with pytest.raises(
        CheckpointError, match=r"input_blocks\.1\.0\.in_layers\.0\.weight has shape \[5\], expected \[32\]"
    ):
        load_adm_checkpoint(tmp_path / "adm_bad.pt", fixture["model_config"])
    del state["input_blocks.1.0.in_layers.0.weight"]
    torch.save(state, tmp_path / "adm_missing.pt")
    with pytest.raises(CheckpointError, match=r"lacks input_blocks\.1\.0\.in_layers\.0\.weight"):
        load_adm_checkpoint(tmp_path / "adm_missing.pt", fixture["model_config"])


def test_purifier_from_checkpoint_both_kinds(tmp_path):
    ddpmpp = load_fixture("ddpmpp_tiny.pt")
    small = PurifierConfig(rounds=(Round.from_total(20, 1),))
    purifier = Purifier.from_checkpoint(
        "ddpmpp", FIXTURES / "ddpmpp_tiny.pt", small, model_config=ddpmpp["fixture"]["config"]
    )
    assert purifier.in_channels == 3
    out = purifier.purify(torch.rand(1, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 32, 32)

    adm = load_fixture("adm_tiny.pt")
    torch.save(adm["state_dict"], tmp_path / "adm.pt")
    purifier = Purifier.from_checkpoint(
        "adm", tmp_path / "adm.pt", small.replace(model_resolution=(32, 32)), model_config=adm["model_config"]
    )
    out = purifier.purify(torch.rand(1, 3, 28, 28), generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 28, 28)  # resized to 32 for the 6-channel model and back
    with pytest.raises(ValueError, match="kind must be one of"):
        Purifier.from_checkpoint("unet", tmp_path / "adm.pt")


def test_models_run_in_bf16_and_channels_last():
    fixture = load_fixture("adm_tiny.pt")
    model = ADMUNet(ADMConfig.from_guided_diffusion(fixture["model_config"])).eval()
    model.load_state_dict(fixture["state_dict"])
    pair = fixture["pairs"][2]
    fast = model.to(torch.bfloat16).to(memory_format=torch.channels_last)
    with torch.no_grad():
        out = fast(pair["x"].to(torch.bfloat16).contiguous(memory_format=torch.channels_last), pair["t"])
    assert torch.allclose(out.float(), pair["output"], atol=0.15), (out.float() - pair["output"]).abs().max()


def test_diffusers_unet_folder_and_safetensors_loaders(tmp_path):
    pytest.importorskip("diffusers")
    from diffusers import UNet2DModel
    from safetensors.torch import save_file

    from manipure_fast.models.diffusers_unet import DiffusersEps, load_diffusers_unet

    config = dict(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    torch.manual_seed(0)
    unet = UNet2DModel(**config).eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3.0, 40.0])
    with torch.no_grad():
        expected = unet(x, t.long()).sample
        unet.save_pretrained(tmp_path / "folder")
        save_file(unet.state_dict(), str(tmp_path / "unet.safetensors"))
        (tmp_path / "unet.json").write_text(json.dumps({"unet_config": config}))
        for path in (tmp_path / "folder", tmp_path / "unet.safetensors"):
            model = load_diffusers_unet(path)
            assert isinstance(model, DiffusersEps) and model.in_channels == 1
            assert torch.allclose(model(x, t), expected, atol=1e-6)
    purifier = Purifier.from_checkpoint(
        "diffusers", tmp_path / "folder", PurifierConfig(rounds=(Round(9, (9,)),))
    )
    assert purifier.purify(torch.rand(1, 1, 16, 16)).shape == (1, 1, 16, 16)
    with pytest.raises(FileNotFoundError, match="sidecar"):
        load_diffusers_unet(tmp_path / "folder" / "diffusion_pytorch_model.safetensors")
