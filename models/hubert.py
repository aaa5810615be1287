"""HuBERT / ContentVec content encoders on torchaudio's wav2vec 2.0 model: key maps and sizes.

Three layouts of the same network are read and renamed to torchaudio's
(:func:`torchaudio.models.wav2vec2_model`) parameter names:

* fairseq (HuBERT, ContentVec, RVC's ``hubert_base.pt``): :data:`FAIRSEQ_KEYS`;
* Hugging Face ``HubertModel`` / ``HubertModelWithFinalProj`` (optional ``hubert.`` prefix):
  :data:`HF_KEYS`;
* torchaudio itself (``Wav2Vec2Model`` or ``HuBERTPretrainModel`` state dicts).

The network sizes come from the checkpoint's own config where it has one (fairseq ``args`` /
``cfg``, a Hugging Face ``config.json``) and otherwise from tensor shapes; the two things shapes
cannot tell are filled by the family's conventions: attention heads (768 -> 12, 1024 and 1280 ->
16, else 64 channels per head) and pre-LN order + waveform normalisation (on iff the conv feature
extractor uses layer norm, as in HuBERT/wav2vec 2.0 large). Conv strides come from the config or,
for the standard kernels (10, 3, 3, 3, 3, 2, 2), are the standard (5, 2, 2, 2, 2, 2, 2).

ContentVec's full (non-legacy) checkpoints carry extra speaker-conditioned layers (keys with
``weight_ln`` / ``bias_ln``: ``CondLayerNorm``) and ``encoder.cond_layer_norm`` that are used
only in its pre-training with a speaker embedding; they are dropped (the usual content layers,
e.g. 12, lie below them).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchaudio.models import Wav2Vec2Model, wav2vec2_model

from comostream.models.checkpoint_io import CheckpointError, load_state_strict

__all__ = [
    "FAIRSEQ_KEYS",
    "HF_KEYS",
    "HubertContent",
    "HubertSpec",
    "build_hubert",
    "rename_fairseq",
    "rename_hf",
    "rename_torchaudio",
]

STANDARD_KERNELS = (10, 3, 3, 3, 3, 2, 2)
STANDARD_STRIDES = (5, 2, 2, 2, 2, 2, 2)
WINDOW_16K = 400  # samples: receptive field of one frame of the standard conv stack
HOP_16K = 320  # samples between frames (20 ms at 16 kHz)

_TA_LAYER = r"encoder.transformer.layers.\1"
_POS = "encoder.transformer.pos_conv_embed.conv"
_WN = {
    "weight_g": "parametrizations.weight.original0",
    "weight_v": "parametrizations.weight.original1",
}

# fairseq name (regex) -> torchaudio name. Conv block i of fairseq's ConvFeatureExtractionModel is
# Sequential(conv, dropout, norm, gelu) where norm is GroupNorm (block 0, "default" mode) or
# Sequential(transpose, LayerNorm, transpose) ("layer_norm" mode).
FAIRSEQ_KEYS: tuple[tuple[str, str], ...] = (
    (
        r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)",
        r"feature_extractor.conv_layers.\1.conv.\2",
    ),
    (
        r"feature_extractor\.conv_layers\.(\d+)\.2\.(weight|bias)",
        r"feature_extractor.conv_layers.\1.layer_norm.\2",
    ),
    (
        r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)",
        r"feature_extractor.conv_layers.\1.layer_norm.\2",
    ),
    (r"layer_norm\.(weight|bias)", r"encoder.feature_projection.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)", r"encoder.feature_projection.projection.\1"),
    (
        r"encoder\.pos_conv\.0\.(bias|weight_g|weight_v|parametrizations\.weight\.original[01])",
        _POS + r".\1",
    ),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.transformer.layer_norm.\1"),
    (
        r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)",
        _TA_LAYER + r".attention.\2_proj.\3",
    ),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", _TA_LAYER + r".layer_norm.\2"),
    (
        r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)",
        _TA_LAYER + r".feed_forward.intermediate_dense.\2",
    ),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", _TA_LAYER + r".feed_forward.output_dense.\2"),
    (
        r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)",
        _TA_LAYER + r".final_layer_norm.\2",
    ),
)
# pre-training only: masking, label embeddings, ContentVec's speaker-conditioned parts, quantiser
FAIRSEQ_IGNORED = re.compile(
    r"(mask_emb|label_embs_concat|layer_proj\..*|target_glu\..*|encoder\.cond_layer_norm\..*"
    r"|quantizer\..*|project_q\..*|w2v_encoder\.proj\..*)"
)

# Hugging Face HubertModel name (regex) -> torchaudio name.
HF_KEYS: tuple[tuple[str, str], ...] = (
    (
        r"feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.(weight|bias)",
        r"feature_extractor.conv_layers.\1.\2.\3",
    ),
    (
        r"feature_projection\.(layer_norm|projection)\.(weight|bias)",
        r"encoder.feature_projection.\1.\2",
    ),
    (
        r"encoder\.pos_conv_embed\.conv\.(bias|weight_g|weight_v|parametrizations\.weight\.original[01])",
        _POS + r".\1",
    ),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.transformer.layer_norm.\1"),
    (
        r"encoder\.layers\.(\d+)\.(attention\.(?:q|k|v|out)_proj|layer_norm|final_layer_norm"
        r"|feed_forward\.(?:intermediate|output)_dense)\.(weight|bias)",
        _TA_LAYER + r".\2.\3",
    ),
)
HF_IGNORED = re.compile(r"(masked_spec_embed|lm_head\..*|projector\..*|classifier\..*)")
TA_IGNORED = re.compile(r"(aux\..*|mask_generator\..*|logit_generator\.label_embeddings)")


@dataclass(frozen=True)
class HubertSpec:
    """Sizes of a HuBERT-family network (names as in fairseq's config)."""

    conv_layers: tuple[tuple[int, int, int], ...]  # (channels, kernel, stride) per conv block
    extractor_mode: str  # "group_norm" (norm in block 0 only) | "layer_norm" (every block)
    conv_bias: bool
    embed_dim: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    pos_conv_kernel: int  # frames
    pos_conv_groups: int
    layer_norm_first: bool  # pre-LN transformer (large models)
    normalize_waveform: bool  # layer-norm the 16 kHz waveform first (fairseq task.normalize)

    @property
    def hop_16k(self) -> int:
        """Samples at 16 kHz between output frames (320 for the standard stack)."""
        hop = 1
        for _, _, stride in self.conv_layers:
            hop *= stride
        return hop

    @property
    def window_16k(self) -> int:
        """Samples at 16 kHz seen by one output frame (400 for the standard stack)."""
        window, hop = 1, 1
        for _, kernel, stride in self.conv_layers:
            window += (kernel - 1) * hop
            hop *= stride
        return window


def _rename(
    sd: Mapping[str, Any], table: tuple[tuple[str, str], ...], ignored: re.Pattern, what: str
) -> dict[str, Tensor]:
    """Rename ``sd`` by ``table``; ignored keys are dropped, unknown keys raise CheckpointError."""
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if ignored.fullmatch(key):
            continue
        for pattern, target in table:
            m = re.fullmatch(pattern, key)
            if m:
                name = m.expand(target)
                for old, new in _WN.items():
                    name = name.replace(old, new)
                out[name] = value
                break
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(sorted(unknown)[:8]) + (" ..." if len(unknown) > 8 else "")
        raise CheckpointError(f"{what}: unexpected keys for a HuBERT-family model: {shown}")
    return out


def _split_final_proj(sd: dict[str, Any], prefix: str) -> tuple[dict[str, Any], Any]:
    proj = {k[len(prefix) :]: sd.pop(k) for k in [k for k in sd if k.startswith(prefix)]}
    return sd, proj or None


def _drop_conditioned_layers(sd: dict[str, Any]) -> dict[str, Any]:
    """Drop ContentVec's speaker-conditioned transformer layers (``CondLayerNorm`` keys)."""
    cond = {int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layers\.(\d+)\..*_ln\.", k))}
    if not cond:
        return sd
    return {
        k: v
        for k, v in sd.items()
        if not ((m := re.match(r"encoder\.layers\.(\d+)\.", k)) and int(m.group(1)) in cond)
    }


def rename_fairseq(sd: Mapping[str, Any], what: str) -> tuple[dict[str, Tensor], Any]:
    """fairseq HuBERT/ContentVec ``model`` state -> (torchaudio state, ``final_proj`` state)."""
    sd = {re.sub(r"^(w2v_encoder\.)?w2v_model\.", "", k): v for k, v in sd.items()}
    sd, proj = _split_final_proj(_drop_conditioned_layers(sd), "final_proj.")
    out = _rename(sd, FAIRSEQ_KEYS, FAIRSEQ_IGNORED, what)
    _identity_projection(out)
    return out, proj


def rename_hf(sd: Mapping[str, Any], what: str) -> tuple[dict[str, Tensor], Any]:
    """Hugging Face ``HubertModel`` state -> (torchaudio state, ``final_proj`` state)."""
    sd = {re.sub(r"^(hubert|wav2vec2)\.", "", k): v for k, v in sd.items()}
    sd, proj = _split_final_proj(sd, "final_proj.")
    return _rename(sd, HF_KEYS, HF_IGNORED, what), proj


def rename_torchaudio(sd: Mapping[str, Any], what: str) -> tuple[dict[str, Tensor], Any]:
    """torchaudio ``Wav2Vec2Model`` / ``HuBERTPretrainModel`` state -> (state, final_proj)."""
    sd = {re.sub(r"^wav2vec2\.", "", k): v for k, v in sd.items()}
    sd, proj = _split_final_proj(sd, "logit_generator.final_proj.")
    table = ((r"(feature_extractor\..*|encoder\..*)", r"\1"),)
    return _rename(sd, table, TA_IGNORED, what), proj


def _identity_projection(sd: dict[str, Tensor]) -> None:
    """fairseq has no ``post_extract_proj`` when conv channels == embed dim: use the identity."""
    key = "encoder.feature_projection.projection"
    if f"{key}.weight" in sd or "encoder.transformer.layer_norm.weight" not in sd:
        return
    dim = sd["encoder.transformer.layer_norm.weight"].shape[0]
    sd[f"{key}.weight"] = torch.eye(dim)
    sd[f"{key}.bias"] = torch.zeros(dim)


def parse_conv_layers(text: str) -> tuple[tuple[int, int, int], ...]:
    """fairseq's ``conv_feature_layers`` string, e.g. ``"[(512,10,5)] + [(512,3,2)] * 4"``,
    read as a literal (lists of int triples, ``+`` and ``* int``; nothing is evaluated)."""

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Tuple | ast.List):
            items = [walk(e) for e in node.elts]
            return tuple(items) if isinstance(node, ast.Tuple) else items
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
            a, b = walk(node.left), walk(node.right)
            return a + b if isinstance(node.op, ast.Add) else a * b
        raise ValueError(f"unsupported expression {ast.dump(node)[:60]}")

    try:
        layers = walk(ast.parse(text, mode="eval").body)
        out = tuple((int(c), int(k), int(s)) for c, k, s in layers)
    except (SyntaxError, ValueError, TypeError) as exc:
        raise ValueError(
            f"conv_feature_layers {text!r} is not a list of (dim, kernel, stride): {exc}"
        ) from None
    if not out:
        raise ValueError("conv_feature_layers is empty")
    return out


def _heads_by_convention(dim: int) -> int:
    if dim in (768,):
        return 12
    if dim in (1024, 1280):
        return 16
    return max(dim // 64, 1)


def infer_spec(sd: Mapping[str, Tensor], cfg: Mapping[str, Any], what: str) -> HubertSpec:
    """Sizes from torchaudio-named ``sd`` shapes and ``cfg`` (fairseq-style names, may be empty)."""
    conv = "feature_extractor.conv_layers"
    n_conv = len({k.split(".")[2] for k in sd if k.startswith(conv + ".")})
    layer_ids = {int(k.split(".")[3]) for k in sd if k.startswith("encoder.transformer.layers.")}
    need = [
        f"{conv}.0.conv.weight",
        "encoder.feature_projection.projection.weight",
        f"{_POS}.parametrizations.weight.original1",
        "encoder.transformer.layers.0.feed_forward.intermediate_dense.weight",
    ]
    missing = [k for k in need if k not in sd]
    if missing or not n_conv or layer_ids != set(range(len(layer_ids))):
        raise CheckpointError(
            f"{what}: not a complete HuBERT-family state (missing "
            f"{missing or 'transformer layers'})"
        )
    kernels = [sd[f"{conv}.{i}.conv.weight"].shape for i in range(n_conv)]
    if "conv_feature_layers" in cfg:
        try:
            layers = parse_conv_layers(str(cfg["conv_feature_layers"]))
        except ValueError as exc:
            raise CheckpointError(f"{what}: {exc}") from None
    elif tuple(k[2] for k in kernels) == STANDARD_KERNELS:
        layers = tuple((k[0], k[2], s) for k, s in zip(kernels, STANDARD_STRIDES, strict=True))
    else:
        raise CheckpointError(
            f"{what}: non-standard conv kernels {[k[2] for k in kernels]} and "
            "no config giving the strides"
        )
    if f"{conv}.1.layer_norm.weight" in sd:
        mode = "layer_norm"
    elif f"{conv}.0.layer_norm.weight" in sd:
        mode = "group_norm"
    else:
        raise CheckpointError(f"{what}: conv feature extractor without normalisation layers")
    embed = sd["encoder.feature_projection.projection.weight"].shape[0]
    pos_v = sd[f"{_POS}.parametrizations.weight.original1"].shape
    heads = int(cfg.get("encoder_attention_heads") or _heads_by_convention(embed))
    if embed % heads:
        raise CheckpointError(f"{what}: {heads} attention heads do not divide {embed} channels")
    return HubertSpec(
        conv_layers=layers,
        extractor_mode=mode,
        conv_bias=f"{conv}.0.conv.bias" in sd,
        embed_dim=embed,
        num_layers=len(layer_ids),
        num_heads=heads,
        ffn_dim=sd["encoder.transformer.layers.0.feed_forward.intermediate_dense.weight"].shape[0],
        pos_conv_kernel=pos_v[2],
        pos_conv_groups=embed // pos_v[1],
        layer_norm_first=bool(cfg.get("layer_norm_first", mode == "layer_norm")),
        normalize_waveform=bool(cfg.get("normalize", mode == "layer_norm")),
    )


def build_hubert(spec: HubertSpec) -> Wav2Vec2Model:
    """torchaudio's wav2vec 2.0 / HuBERT network of ``spec`` sizes, dropout off."""
    return wav2vec2_model(
        extractor_mode=spec.extractor_mode,
        extractor_conv_layer_config=list(spec.conv_layers),
        extractor_conv_bias=spec.conv_bias,
        encoder_embed_dim=spec.embed_dim,
        encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=spec.pos_conv_kernel,
        encoder_pos_conv_groups=spec.pos_conv_groups,
        encoder_num_layers=spec.num_layers,
        encoder_num_heads=spec.num_heads,
        encoder_attention_dropout=0.0,
        encoder_ff_interm_features=spec.ffn_dim,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_norm_first=spec.layer_norm_first,
        encoder_layer_drop=0.0,
        aux_num_out=None,
    )


class HubertContent(nn.Module):
    """16 kHz waveform -> hidden states of one transformer layer: ``(B, M) -> (B, J, D)``.

    ``layer`` is 1-based (the hidden state after that transformer layer, as fairseq's
    ``extract_features(output_layer=layer)``); 0 is the encoder's own output (the last layer,
    followed by the final layer norm in pre-LN models). The input is zero-padded by half a
    window (200 samples) in front, so frame j is centred at 16 kHz sample ``hop_16k * j``
    (:attr:`first_centre_16k` = 0), and by a window + hop at the end, so the last frame lies
    past the last sample. ``final_proj`` (e.g. 768 -> 256) is applied when given.
    """

    def __init__(
        self,
        model: Wav2Vec2Model,
        spec: HubertSpec,
        layer: int,
        final_proj: nn.Linear | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= layer <= spec.num_layers:
            raise ValueError(
                f"layer {layer} out of range: the model has {spec.num_layers} "
                "transformer layers (1-based; 0 = the encoder output)"
            )
        self.model = model
        self.spec = spec
        self.layer = layer
        self.final_proj = final_proj
        self.hop_16k = spec.hop_16k
        self.first_centre_16k = 0.0
        self.lookahead_16k = spec.window_16k - spec.window_16k // 2  # future of one frame centre
        self.dim = final_proj.out_features if final_proj is not None else spec.embed_dim

    def conv_features(self, wav: Tensor) -> Tensor:
        """The conv feature extractor on the padded input: ``(B, M) -> (B, J, C)``."""
        if self.spec.normalize_waveform:
            wav = F.layer_norm(wav, wav.shape[-1:])
        half = self.spec.window_16k // 2
        wav = F.pad(wav, (half, self.spec.window_16k - half + self.hop_16k))
        return self.model.feature_extractor(wav, None)[0]

    def forward(self, wav: Tensor) -> Tensor:
        """``wav`` (B, M) float at 16 kHz -> (B, J, dim) frames, J = (M + hop) // hop + 1."""
        feats = self.conv_features(wav)
        depth = self.layer or self.spec.num_layers
        h = self.model.encoder.extract_features(feats, None, num_layers=depth)[depth - 1]
        if self.layer == 0 and self.spec.layer_norm_first:
            h = self.model.encoder.transformer.layer_norm(h)
        if self.final_proj is not None:
            h = self.final_proj(h)
        return h


def hubert_content(
    sd: Mapping[str, Tensor],
    proj: Mapping[str, Tensor] | None,
    cfg: Mapping[str, Any],
    layer: int,
    projection: bool,
    what: str,
) -> HubertContent:
    """Build, load (strict keys and shapes) and wrap a torchaudio-named HuBERT state."""
    spec = infer_spec(sd, cfg, what)
    model = build_hubert(spec)
    load_state_strict(model, sd, what)
    final: nn.Linear | None = None
    if projection:
        if not proj or "weight" not in proj:
            raise CheckpointError(
                f"{what}: projection requested but the checkpoint has no final_proj"
            )
        w = proj["weight"]
        final = nn.Linear(w.shape[1], w.shape[0], bias="bias" in proj)
        load_state_strict(final, proj, f"{what}: final_proj")
    try:
        return HubertContent(model, spec, layer, final).eval()
    except ValueError as exc:
        raise CheckpointError(f"{what}: {exc}") from None
