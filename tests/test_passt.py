"""PaSST teacher: forward pass, official state-dict layout, checkpoint loading, head
initialisation, patchout, frontend; numerics against hear21passt when importable."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from mobileast.features import LogMel
from mobileast.models.passt import (CHECKPOINT_URLS, Attention, PaSST, PaSSTConfig, PaSSTMel,
                                    mask_random_bands, passt_from_checkpoint)

SMALL = dict(embed_dim=64, depth=2, n_heads=4)  # reduced width/depth, official patch grid
OFFICIAL_NAME = "passt-s-f128-p16-s10-ap.476-swa.pt"
FIXTURE = Path(__file__).parent / "fixtures" / "passt_state_dict.json"


def small_passt(**overrides) -> PaSST:
    torch.manual_seed(0)
    return PaSST(PaSSTConfig(**{**SMALL, **overrides}))


def wave_batch(batch: int = 2, seconds: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return 0.1 * torch.randn(batch, int(32000 * seconds), generator=g)


def test_forward_on_1s_batch_and_gradients():
    model = small_passt()
    wave = wave_batch()
    assert model.mel.eval()(wave).shape == (2, 1, 128, 100)
    model.eval()
    logits = model(wave)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    model.train()
    model(wave).sum().backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert not any(n.startswith("head_dist") for n in trainable)  # unused in forward, frozen


def test_full_size_state_dict_equals_official_fixture():
    with torch.device("meta"):  # shapes only, no 86M-parameter allocation
        model = PaSST(PaSSTConfig(n_classes=527))
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert ours == json.loads(FIXTURE.read_text())["state_dict"]


@pytest.fixture
def official_checkpoint(tmp_path):
    """A reduced model's 527-class state dict saved as a plain state dict, like the release files."""
    state = small_passt(n_classes=527).state_dict()
    path = tmp_path / OFFICIAL_NAME
    torch.save(state, path)
    return path, state


def test_official_format_checkpoint_loads(official_checkpoint):
    path, state = official_checkpoint
    model = passt_from_checkpoint(str(path), n_classes=10, **SMALL)
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        if key.startswith(("head.1.", "head_dist.")):
            assert loaded[key].shape[0] == 10
        else:
            assert_close(loaded[key], value, rtol=0, atol=0)


def test_head_is_adaptive_average_pool_of_pretrained_head(official_checkpoint):
    path, state = official_checkpoint
    model = passt_from_checkpoint(path, n_classes=10, **SMALL)
    for layer, prefix in ((model.head[1], "head.1"), (model.head_dist, "head_dist")):
        weight, bias = state[f"{prefix}.weight"], state[f"{prefix}.bias"]  # (527, D), (527,)
        slow_w = torch.stack([weight[math.floor(i * 527 / 10):math.ceil((i + 1) * 527 / 10)].mean(0)
                              for i in range(10)])
        slow_b = torch.stack([bias[math.floor(i * 527 / 10):math.ceil((i + 1) * 527 / 10)].mean()
                              for i in range(10)])
        assert_close(layer.weight, slow_w)
        assert_close(layer.bias, slow_b)
        assert_close(layer.weight, F.adaptive_avg_pool1d(weight.T[None], 10)[0].T)
        assert_close(layer.bias, F.adaptive_avg_pool1d(bias[None, None], 10)[0, 0])


def test_missing_checkpoint_says_which_file_and_where(tmp_path):
    path = tmp_path / "models" / OFFICIAL_NAME
    with pytest.raises(FileNotFoundError) as err:
        passt_from_checkpoint(path, **SMALL)
    message = str(err.value)
    assert str(path) in message and CHECKPOINT_URLS[OFFICIAL_NAME] in message
    assert CHECKPOINT_URLS[OFFICIAL_NAME] == (
        "https://github.com/kkoutini/PaSST/releases/download/v0.0.1-audioset/" + OFFICIAL_NAME)


def test_patchout_only_in_training():
    model = small_passt(patchout_f=6, patchout_t=2)
    lengths = []
    model.blocks[0].register_forward_hook(lambda m, inp, out: lengths.append(inp[0].shape[1]))
    wave = wave_batch()
    model.train()(wave)
    model.eval()
    first, second = model(wave), model(wave)
    assert lengths == [2 + (12 - 6) * (9 - 2), 2 + 12 * 9, 2 + 12 * 9]  # cls + dist + patches
    assert_close(first, second, rtol=0, atol=0)


def test_input_longer_than_time_embedding_is_rejected():
    model = small_passt(input_tdim=100).eval()  # time embedding covers 10 patch columns
    with pytest.raises(ValueError, match="time patches"):
        model(wave_batch(1, seconds=1.5))  # 150 frames -> 14 columns


def test_mel_eval_equals_logmel_and_training_augments():
    mel = PaSSTMel(PaSSTConfig())
    wave = wave_batch()
    reference = LogMel(sample_rate=32000, n_fft=1024, win_length=800, hop_length=320, n_mels=128,
                       preemphasis=0.97, f_min=0.0, f_max=15000.0)
    assert_close(mel.eval()(wave), reference(wave))
    torch.manual_seed(0)
    assert not torch.allclose(mel.train()(wave), reference(wave))


def test_mask_random_bands_masks_one_short_band_per_example():
    torch.manual_seed(0)
    x = torch.rand(64, 128, 100) + 1.0  # no zeros before masking
    for dim, max_width in ((-2, 48), (-1, 20)):
        masked = mask_random_bands(x, max_width, dim)
        other = -1 if dim == -2 else -2
        zero = (masked == 0).all(dim=other)  # (B, size): masked rows of `dim`
        assert ((masked == 0).any(dim=other) == zero).all()  # whole rows, nothing else
        widths = zero.sum(1)
        assert widths.max() < max_width and len(set(widths.tolist())) > 1  # iid widths
        for row in zero:
            idx = row.nonzero().flatten()
            assert len(idx) == 0 or (idx == torch.arange(idx[0], idx[0] + len(idx))).all()


def test_attention_matches_naive_softmax():
    torch.manual_seed(0)
    attn = Attention(PaSSTConfig(**SMALL))
    x = torch.randn(2, 11, 64)
    q, k, v = attn.qkv(x).view(2, 11, 3, 4, 16).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(16), dim=-1)
    naive = attn.proj((weights @ v).transpose(1, 2).reshape(2, 11, 64))
    assert_close(attn(x), naive)


def test_matches_hear21passt():
    """Same weights and eval mode: our frontend and logits equal hear21passt 0.0.26's."""
    theirs_passt = pytest.importorskip("hear21passt.models.passt")
    theirs_mel = pytest.importorskip("hear21passt.models.preprocess")
    torch.manual_seed(0)
    theirs = theirs_passt.PaSST(img_size=(128, 998), patch_size=16, stride=(10, 10), in_chans=1,
                                num_classes=527, embed_dim=64, depth=2, num_heads=4,
                                distilled=True).eval()
    ours = PaSST(PaSSTConfig(n_classes=527, **SMALL)).eval()
    ours.load_state_dict(theirs.state_dict())
    mel = theirs_mel.AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024,
                                    freqm=48, timem=192, fmin=0.0, fmax=None,
                                    fmin_aug_range=10, fmax_aug_range=2000).eval()
    wave = wave_batch()
    with torch.no_grad():
        spec = mel(wave).unsqueeze(1)
        assert_close(ours.mel(wave), spec, rtol=1e-4, atol=1e-4)
        assert_close(ours.classify(spec), theirs(spec)[0], rtol=1e-4, atol=1e-5)
