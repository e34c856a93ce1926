"""Checkpoints written by the reference implementation (its released pretraining and finetuned weights), read into
this repository's layout as they load, with no conversion step for the user.

The reference saves `{epoch, net, state_dict, best_acc, optimizer, iteration}`: pretraining from the bare model
(`backbone.*`, `transEnc.*`, `agg.*`, `network_pred.*`), finetuning from nn.DataParallel (every name prefixed
`module.`, head `final_bn.*`, `final_fc.1.*`). Its layers differ from ours in three places, converted here:
- attention: q, k and v are three Linear layers (`linears.0-2`, output `linears.3`); ours stack them in
  `in_proj_weight`;
- LayerNorm: `a_2 * (x - mean) / (unbiased std + 1e-6) + b_2`; torch's divides by the biased std, so the weight
  takes the factor sqrt((n - 1) / n) between the two (equal up to the two epsilons);
- ConvGRU: separate reset and update gate convolutions; ours stack them, reset first.
"""
import math
import re

import torch

from CPCTrans.convgru import GRU_DROPOUT

REFERENCE_DROPOUT = 0.5  # the classifier's --dropout default; inference does not use it

# reference name -> (our name, which part of a stacked tensor, parts in it). The first pattern is what the reference's
# model holds but never uses (copies of a layer's attention and FFN, an fc, a second name for the GRU cell, a
# positional-encoding table it does not add); those, and names matching nothing, are listed as unused.
LAYER = r"transEnc\.transEncoder\.layers\.(\d+)\."
RENAMES = [
    (r"backbone\.fc\..*|transEnc\.(attn|ff|position)\..*|agg\.ConvGRUCell_\d+\..*", None),
    (r"backbone\.(.*)", (r"encoder.backbone.\1", 0, 1)),
    (LAYER + r"self_attn\.linears\.0\.(weight|bias)", (r"encoder.transformer.layers.\1.self_attn.in_proj_\2", 0, 3)),
    (LAYER + r"self_attn\.linears\.1\.(weight|bias)", (r"encoder.transformer.layers.\1.self_attn.in_proj_\2", 1, 3)),
    (LAYER + r"self_attn\.linears\.2\.(weight|bias)", (r"encoder.transformer.layers.\1.self_attn.in_proj_\2", 2, 3)),
    (LAYER + r"self_attn\.linears\.3\.(weight|bias)", (r"encoder.transformer.layers.\1.self_attn.out_proj.\2", 0, 1)),
    (LAYER + r"feed_forward\.w_1\.(weight|bias)", (r"encoder.transformer.layers.\1.linear1.\2", 0, 1)),
    (LAYER + r"feed_forward\.w_2\.(weight|bias)", (r"encoder.transformer.layers.\1.linear2.\2", 0, 1)),
    (LAYER + r"sublayer\.0\.norm\.a_2", (r"encoder.transformer.layers.\1.norm1.weight", 0, 1)),
    (LAYER + r"sublayer\.0\.norm\.b_2", (r"encoder.transformer.layers.\1.norm1.bias", 0, 1)),
    (LAYER + r"sublayer\.1\.norm\.a_2", (r"encoder.transformer.layers.\1.norm2.weight", 0, 1)),
    (LAYER + r"sublayer\.1\.norm\.b_2", (r"encoder.transformer.layers.\1.norm2.bias", 0, 1)),
    (r"transEnc\.transEncoder\.norm\.a_2", ("encoder.transformer.norm.weight", 0, 1)),
    (r"transEnc\.transEncoder\.norm\.b_2", ("encoder.transformer.norm.bias", 0, 1)),
    (r"agg\.cell_list\.0\.reset_gate\.(weight|bias)", (r"agg.gates.\1", 0, 2)),
    (r"agg\.cell_list\.0\.update_gate\.(weight|bias)", (r"agg.gates.\1", 1, 2)),
    (r"agg\.cell_list\.0\.out_gate\.(weight|bias)", (r"agg.candidate.\1", 0, 1)),
    (r"network_pred\.(.*)", (r"predictor.\1", 0, 1)),
    (r"(final_bn|final_fc)\.(.*)", (r"\1.\2", 0, 1)),
]
LAYER_NORM_SCALE = re.compile(r"(sublayer\.\d\.norm|transEncoder\.norm)\.a_2$")


class ReferenceFormatError(Exception):
    """A checkpoint that looks like the reference's but lacks part of a tensor it needs."""


def is_reference_checkpoint(state) -> bool:
    """The reference's checkpoints are the only ones here with a `state_dict` and no `kind`."""
    if not isinstance(state, dict) or "kind" in state or not isinstance(state.get("state_dict"), dict):
        return False
    return any(_strip(name).startswith(("backbone.", "transEnc.")) for name in state["state_dict"])


def _strip(name: str) -> str:
    return name.removeprefix("module.")


def _target(name: str) -> tuple[str, int, int] | None:
    """(our name, part, parts) of a reference tensor; None for one that has no counterpart here."""
    for pattern, target in RENAMES:
        match = re.fullmatch(pattern, name)
        if match:
            return None if target is None else (match.expand(target[0]), target[1], target[2])
    return None


def convert_state_dict(reference: dict) -> tuple[dict, list[str]]:
    """The reference's tensors -> (ours by our names, the names of the reference's tensors left unused)."""
    parts: dict[str, dict[int, torch.Tensor]] = {}
    counts: dict[str, int] = {}
    unused = []
    for full_name, tensor in reference.items():
        name = _strip(full_name)
        target = _target(name)
        if target is None:
            unused.append(full_name)
            continue
        ours, part, count = target
        if LAYER_NORM_SCALE.search(name):
            tensor = tensor * math.sqrt((tensor.numel() - 1) / tensor.numel())
        parts.setdefault(ours, {})[part] = tensor
        counts[ours] = count
    incomplete = [name for name, found in parts.items() if len(found) != counts[name]]
    if incomplete:
        raise ReferenceFormatError(f"parts of {', '.join(incomplete)} are missing")
    return {name: found[0] if len(found) == 1 else torch.cat([found[part] for part in sorted(found)])
            for name, found in parts.items()}, unused


def from_reference(state: dict) -> dict:
    """A reference checkpoint -> one in this repository's layout (checkpoint.training_state's keys that loading
    reads), with `converted_from_reference` listing the unused tensors. Its model_config has what the weights
    tell (classes, architecture); clip length and image size are not recorded in the reference's files."""
    state_dict, unused = convert_state_dict(state["state_dict"])
    net = state.get("net") or "resnet18"
    config = {"net": net, "attn": "full", "pos_enc": "none", "gru_dropout": GRU_DROPOUT}
    if "final_fc.1.weight" in state_dict:
        kind = "classifier"
        config.update(num_classes=state_dict["final_fc.1.weight"].shape[0], dropout=REFERENCE_DROPOUT)
    elif "predictor.0.weight" in state_dict:
        kind = "cpc"
    else:
        raise ReferenceFormatError("it has neither the pretraining head (network_pred) nor the classifier "
                                   "(final_fc)")
    best_acc = state.get("best_acc")
    return {"kind": kind, "model_config": config, "state_dict": state_dict, "epoch": int(state.get("epoch") or 0),
            "best_acc": float(best_acc) if best_acc is not None else 0.0, "args": {}, "val_metrics": {},
            "converted_from_reference": unused}
