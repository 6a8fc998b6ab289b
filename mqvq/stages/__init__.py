"""The pipeline, one module per stage: train_stage1 -> tokenize -> train_stage2 -> generate -> evaluate.

Each stage reads what an earlier one wrote (a checkpoint, a token file, an MLflow run) and never
reaches back into it. `runs`, `schedule`, `lookup`, `reference` and `reconstruction` are shared by
the stages; the training loops are explicit, resumable and DDP-ready.
"""
