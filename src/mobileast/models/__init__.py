"""Model registry: architecture name -> (config dataclass, model class), and named presets.

Checkpoints store `arch` and `config` (the config dataclass as a dict); `build_model`
turns them back into a model and `model_spec` produces them from a model. Every model
class takes its config dataclass as its only argument and keeps it as `model.cfg`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from torch import nn

from mobileast.errors import ParamsError, params_errors

from mobileast.models.cnn import CNN, CNNConfig, PRESETS as CNN_PRESETS
from mobileast.models.mobileast import MobileASTConfig, MobileASTLight, PRESETS as STUDENT_PRESETS
from mobileast.models.passt import PaSST, PaSSTConfig

# arch -> (config class, model class). Imported statically, so that every stage that can
# rebuild a model of an architecture depends on its file (mobileast.imports reads imports).
ARCHS: dict[str, tuple[type, type[nn.Module]]] = {
    "mobileast": (MobileASTConfig, MobileASTLight),
    "cnn": (CNNConfig, CNN),
    "passt": (PaSSTConfig, PaSST),
}

# preset name -> (arch, config)
PRESETS: dict[str, tuple[str, Any]] = {
    **{name: ("mobileast", cfg) for name, cfg in STUDENT_PRESETS.items()},
    **{name: ("cnn", cfg) for name, cfg in CNN_PRESETS.items()},
}


def _classes(arch: str) -> tuple[type, type[nn.Module]]:
    if arch not in ARCHS:
        raise KeyError(f"unknown architecture {arch!r}; choose from {sorted(ARCHS)}")
    return ARCHS[arch]


def make_config(config_cls: type, config: Mapping[str, Any]) -> Any:
    """A config dataclass from a plain dict (checkpoint, params.yaml); unknown keys are an error."""
    unknown = set(config) - {f.name for f in dataclasses.fields(config_cls)}
    if unknown:
        raise ParamsError(f"unknown {config_cls.__name__} fields: {sorted(unknown)} "
                          f"(known: {', '.join(f.name for f in dataclasses.fields(config_cls))})")
    return config_cls(**config)


def build_model(arch: str, config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a model from a checkpoint's `arch` and `config` dict."""
    config_cls, model_cls = _classes(arch)
    return model_cls(make_config(config_cls, config))


def model_spec(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """(arch, config dict) of a registry model, as checkpoints store them."""
    for arch, (_, model_cls) in ARCHS.items():
        if isinstance(model, model_cls):
            return arch, dataclasses.asdict(model.cfg)
    raise TypeError(f"{type(model).__name__} is not a registry model")


def build_preset(name: str, **overrides: Any) -> nn.Module:
    """A model from a named preset (`sub1`..`sub4`, `teacher_cnn`), some fields replaced."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    arch, config = PRESETS[name]
    return build_model(arch, {**dataclasses.asdict(config), **overrides})


def input_size(features: Mapping[str, Any]) -> tuple[int, int]:
    """(mel bins, frames) of the log-mel of 1 s: what the student's input_size must be."""
    return int(features["n_mels"]), int(features["sample_rate"]) // int(features["hop_length"])


def build_student(student_params: Mapping[str, Any], features: Mapping[str, Any] | None = None) -> nn.Module:
    """The student from params.yaml's `student:` section, for the log-mels of `features:`.

    `preset: subN` takes that preset with the fields in `custom` replaced;
    `preset: custom` takes the MobileASTConfig defaults with `custom` applied. The input
    size follows from `features` (n_mels, sample_rate / hop_length); a `custom.input_size`
    that disagrees with it is an error. Every error is a ParamsError naming the section
    (and the input size, where the features give one the model cannot take).
    """
    name, custom = student_params["preset"], dict(student_params.get("custom") or {})
    if name != "custom" and name not in STUDENT_PRESETS:
        raise ParamsError(f"student.preset must be 'custom' or one of {', '.join(STUDENT_PRESETS)}, got {name!r}")
    where = f"student (preset {name}, custom {custom})"
    if features is not None:
        derived = input_size(features)
        if "input_size" in custom and tuple(custom["input_size"]) != derived:
            raise ParamsError(f"student.custom.input_size {list(custom['input_size'])} disagrees with the features "
                              f"({list(derived)} = features.n_mels, features.sample_rate / features.hop_length); "
                              "leave it out: it follows from the features")
        custom["input_size"] = derived
        where += (f" on the input {derived[0]} x {derived[1]} of the features (features.n_mels x "
                  "features.sample_rate / features.hop_length)")
    with params_errors(where):
        return build_model("mobileast", custom) if name == "custom" else build_preset(name, **custom)


__all__ = ["ARCHS", "PRESETS", "build_model", "build_preset", "build_student", "input_size", "make_config",
           "model_spec"]
