"""Stage device_models: one copy of models/student.pt per training device, fine-tuned on that
device's train recordings only, quantized (calibrated on that device's crops) and exported
to int8 ONNX -> models/device/<dev>.pt, <dev>_int8.pt, <dev>_int8.onnx, <dev>_complexity.json,
<dev>_history.csv and manifest.json (mobileast.routing). evaluate routes each clip to its
device's model, and the clips of the other devices (unseen in training) to the general model.

Off by default (`device_models.enabled`): the stage then writes a manifest with no models
and imports nothing of the training code, so the default pipeline pays only an interpreter
start for it.

The recipe follows the DCASE 2025 task 1 baseline's device-specific fine-tuning: start from
the trained general model, a few epochs at a constant learning rate well below the
student's peak, cross-entropy on the labels (distill.method none). Cross-entropy rather than
distillation: the general student already carries the teacher's knowledge, a device's
recordings are a small subset that the short fine-tuning only adapts to, and the stage then
needs neither the teacher logits nor their crop grid. The student's `augment` section
applies as in its training; everything else of the student's `train` section (optimizer,
weight decay, precision, validation) is kept, with the schedule constant.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from mobileast.params import stage_params
from mobileast.routing import write_manifest
from stages import run

if TYPE_CHECKING:
    from mobileast.training.checkpoint import Outputs

PARAMS = ["seed", "train", "augment", "quant", "logits.hop_s", "data.split", "device_models"]
STUDENT = Path("models/student.pt")
OUT = Path("models/device")
RECIPE = ("epochs", "lr", "batch_size", "crops_per_recording")  # the keys of device_models that shape a model


def fine_tune_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The params of one device's fine-tuning run (the engine's `train`, `augment` and
    `seed`): the student's `train` section with device_models' recipe keys and a
    constant schedule."""
    recipe = {k: params["device_models"][k] for k in RECIPE}
    train = {**params["train"], **recipe, "schedule": {"warmup": "none", "decay": "constant"}}
    return {"seed": params["seed"], "train": train, "augment": params["augment"]}


def main() -> None:
    params = stage_params(PARAMS)
    section = params["device_models"]
    if not section["enabled"]:
        write_manifest(OUT, False, {})
        print("device_models: disabled (device_models.enabled: false); evaluate uses the general model only")
        return
    from mobileast import tracking
    from mobileast.data import RECORDINGS_DIR, RESAMPLED_DIR
    from mobileast.data.store import read_recordings

    train_devices = set(read_recordings(RECORDINGS_DIR).query("fold == 'train'")["device"])
    devices = [d for d in section["devices"] if d in train_devices]
    skipped = [d for d in section["devices"] if d not in train_devices]
    models = {}
    with tracking.start_run("device_models", params):
        for device in devices:
            models[device] = device_model(device, params, RECORDINGS_DIR, RESAMPLED_DIR)
    write_manifest(OUT, True, models, general=str(STUDENT), recipe={k: section[k] for k in RECIPE},
                   skipped=skipped)
    for device in devices:
        outputs(device).discard_resume()  # every output is written
    print(f"device_models: {', '.join(devices) or 'no device'} fine-tuned"
          + (f"; no train recordings of {', '.join(skipped)} (the general model serves them)" if skipped else ""))


def outputs(device: str) -> Outputs:
    """The engine's files of one device's fine-tuning (mobileast.training.checkpoint.Outputs)."""
    from mobileast.training.checkpoint import Outputs, resume_path

    return Outputs(model=OUT / f"{device}.pt", resume=resume_path(f"device_models_{device}"),
                   history=OUT / f"{device}_history.csv")


def device_model(device: str, params: Mapping[str, Any], recordings: Path, resampled: Path) -> dict[str, Any]:
    """Fine-tune, quantize and export the model of `device`; returns its manifest entry."""
    from mobileast import tracking
    from mobileast.complexity import complexity_report, headline
    from mobileast.data.crops import train_crops
    from mobileast.deploy import input_shape, load_checkpoint_model, load_deployed
    from mobileast.distill import DistillLoss
    from mobileast.errors import ParamsError
    from mobileast.export import export_int8
    from mobileast.files import write_json
    from mobileast.quantize import quantize_student
    from mobileast.training.checkpoint import stage_code
    from mobileast.training.distributed import runtime
    from mobileast.training.supervised import train_supervised

    section, tune = params["device_models"], fine_tune_params(params)
    model, meta = load_checkpoint_model(STUDENT)
    data = train_crops(recordings, resampled, meta.sample_rate, params["logits"]["hop_s"], "logits.hop_s",
                       "features.sample_rate", int(section["crops_per_recording"]), params["seed"],
                       split=int(params["data"]["split"]), devices=[device])
    if data.steps_per_epoch(int(section["batch_size"])) == 0:
        raise ParamsError(f"device_models.batch_size {section['batch_size']} is larger than the crops of one epoch "
                          f"of device {device} ({len(data.table)} train recordings x device_models."
                          f"crops_per_recording {section['crops_per_recording']}): lower it, raise "
                          "crops_per_recording, or leave the device out of device_models.devices")
    checkpoint_meta = meta.replace(params={**(meta.params or {}), "device_model": {"device": device, **tune["train"]}})
    files = outputs(device)
    with runtime(params["seed"]) as rt:
        train_supervised(model, checkpoint_meta, "", tune, DistillLoss.cross_entropy(), resampled, data, files, rt,
                         (recordings, resampled, STUDENT), stage_code(__spec__.name),
                         on_epoch=lambda row, epoch: tracking.log_metrics({f"{device}.{k}": v for k, v in row.items()},
                                                                          epoch))
    int8, onnx = OUT / f"{device}_int8.pt", OUT / f"{device}_int8.onnx"
    quantized = quantize_student(files.model, recordings, resampled, int8, params["quant"],
                                 params["logits"]["hop_s"], params["seed"], int(params["data"]["split"]), device)
    export_int8(int8, onnx, recordings, resampled)
    float_model, _ = load_checkpoint_model(files.model)
    stored, _ = load_deployed(int8)
    write_json(OUT / f"{device}_complexity.json",
               headline(complexity_report(float_model, (1, *input_shape(meta)), stored=stored)))
    return {"float": files.model.name, "int8": int8.name, "onnx": onnx.name,
            "complexity": f"{device}_complexity.json", "history": files.history.name,
            "n_recordings": len(data.table), "epochs": int(section["epochs"]),
            "param_memory_bytes": quantized["param_memory_bytes"],
            "evaluate_agreement_int8_float": quantized["evaluate_agreement"]["top1_agreement"]}


if __name__ == "__main__":
    run(main)
