"""DCASE Task 1 submissions in each year's format, written by `python -m mobileast submit`.

- `common`: what every year shares: the label rule, classifying a folder of audio files,
  the system output file, complexity figures, the system description, the development
  results computed on the evaluate fold of the pipeline's store, the meta.yaml writer.
- `dcase2023`: one model: `<label>.output.csv`, `<label>.complexity.json`, `<label>.meta.yaml`.
- `dcase2024`: one model per training split (5, 10, 25, 50, 100 %):
  `<label>.output.split_<N>.csv` each and one `<label>.meta.yaml` with per-split results.
- `dcase2025`: an inference package folder (the four API functions of the 2025 task,
  a general model, one model per device, routing, complexity.json);
  `inference_package`: the package's API module, copied into it verbatim (numpy and torch,
  onnxruntime for ONNX models; nothing of this project).
"""
