"""The training engine and what the training stages share.

schedule (learning rate over the epochs), settings (what the engine reads from a params
section), distributed (device, torchrun processes, what they exchange), checkpoint (the
files a run writes and resumes from), engine (`fit`: the epoch loop, with callbacks for
logging), supervised (the teacher's and the student's training step and their common
set-up). The engine knows nothing of MLflow: the stages pass their loggers as callbacks.
"""
