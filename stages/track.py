"""Stage track (always runs, last): the MLflow summary run of the current DVC experiment
state, logged only when the store lacks it (mobileast.summary, mobileast.tracking), so
every `dvc repro` / `dvc exp run` leaves exactly one summary run per experiment state,
whether the other stages ran, were skipped or were restored from DVC's run cache.

Depends on the whole params.yaml: the summary run records every parameter."""
from mobileast.params import load_params
from mobileast.summary import sync
from stages import run

PARAMS = None  # the whole params.yaml


def main() -> None:
    result = sync(load_params())
    what = "logged" if result.created else "already in the store:"
    model = f", its int8 model models:/{result.model_id}" if result.model_id else ""
    registered = f", registered as version {result.model_version}" if result.model_version else ""
    print(f"track: summary run {result.run_id} {what} for this experiment state{model}{registered}; "
          f"{result.adopted} stage run(s) nested under it")


if __name__ == "__main__":
    run(main)
